"""The user's own datasets: whatever splits they bring, made into train/val/test :class:`Splits`.

A user's data arrives as one dataset, ``(train, test)``, ``(train, val, test)`` or a dict with
``train``/``val``/``test`` keys; items are ``(x, y)`` or ``(x, y, ...)``. Missing splits are cut
from what is there, stratified by class: validation from train (``val_fraction``), and, for a
single dataset, test as well (``test_fraction``). Every item becomes ``(x, y, index)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdspec.data.splits import IndexedSubset, Splits, stratified_split

__all__ = ["UserDataError", "splits_from_datasets", "user_splits"]


class UserDataError(ValueError):
    """A user's data cannot be used (the message says why)."""


class _Indexed(Dataset[tuple[Any, Any, int]]):
    """Items ``(x, y, index)`` of a dataset whose items are ``(x, y, ...)``."""

    def __init__(self, base: Dataset[Any], targets: Tensor | None = None) -> None:
        self.base = base
        self.targets = targets

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        x, y, *_ = self.base[i]
        return x, y, i


def _is_dataset(obj: Any) -> bool:
    # A tuple is a group of splits (or one sample), never a dataset here.
    sized = hasattr(obj, "__getitem__") and hasattr(obj, "__len__")
    return sized and not isinstance(obj, str | bytes | tuple | Mapping)


def _labels(dataset: Dataset[Any], name: str) -> Tensor:
    targets = getattr(dataset, "targets", None)
    try:
        if targets is not None:
            labels = torch.as_tensor(targets)
        else:  # read every item once (give the dataset a `targets` attribute to avoid it)
            labels = torch.as_tensor([_label(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError) as exc:
        raise UserDataError(f"cannot read the labels of the {name} split: {exc}") from None
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise UserDataError(
            f"the {name} split's labels must be integer class indices, got {labels.dtype} "
            f"of shape {tuple(labels.shape)}"
        )
    if len(labels) and int(labels.min()) < 0:
        raise UserDataError(f"the {name} split has a negative label ({int(labels.min())})")
    return labels.long()


def _label(y: Any) -> int:
    if isinstance(y, Tensor):
        if y.numel() != 1 or y.dtype.is_floating_point:
            raise ValueError(
                f"labels must be integer class indices, got a {y.dtype} tensor of shape "
                f"{tuple(y.shape)}"
            )
        return int(y)
    if isinstance(y, bool) or not isinstance(y, int):
        raise ValueError(f"labels must be integer class indices, got a {type(y).__name__}")
    return y


def _item_shape(dataset: Dataset[Any], name: str) -> tuple[int, ...]:
    try:
        item = dataset[0]
        x = item[0]
    except Exception as exc:
        raise UserDataError(f"cannot read item 0 of the {name} split: {exc}") from None
    if not isinstance(x, Tensor):
        raise UserDataError(
            f"the {name} split's inputs are {type(x).__name__}, not tensors "
            "(convert them in the dataset, e.g. with a `ToTensor` transform)"
        )
    return tuple(x.shape)


def _num_classes(base: Any, labels: Sequence[Tensor]) -> int:
    declared = getattr(base, "num_classes", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    classes = getattr(base, "classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
        return len(classes)
    return max(int(y.max()) for y in labels if len(y)) + 1


def splits_from_datasets(
    train: Dataset[Any],
    val: Dataset[Any] | None,
    test: Dataset[Any] | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    augmented: Dataset[Any] | None = None,
) -> Splits:
    """Train/val/test from the splits a user has; missing ones are cut from train.

    Args:
        train: The training data (items ``(x, y, ...)``).
        val: Validation data, or None to cut ``val_fraction`` of train (per class).
        test: Test data, or None to cut ``test_fraction`` of train (per class).
        val_fraction: Share of train held out for validation when ``val`` is None.
        test_fraction: Share of train held out for test when ``test`` is None.
        seed: Seed of the cut.
        augmented: The same items as ``train`` with training augmentation, read by the
            training split only (what is cut from train for validation or test stays plain).

    Raises:
        UserDataError: Empty training data, labels that are not class indices, inputs that
            are not tensors, or a label outside the class count.
    """
    if len(train) == 0:  # type: ignore[arg-type]
        raise UserDataError("the training split is empty")
    train_labels = _labels(train, "train")
    base = _Indexed(train, train_labels)
    cut_val = val_fraction if val is None else 0.0
    cut_test = test_fraction if test is None else 0.0
    if cut_val + cut_test >= 1:
        raise UserDataError(
            f"cutting validation ({cut_val}) and test ({cut_test}) from train leaves nothing"
        )
    train_idx, val_idx, test_idx = stratified_split(train_labels, cut_val, cut_test, seed)
    fit_base = _Indexed(augmented, train_labels) if augmented is not None else base
    parts: dict[str, Dataset[Any]] = {
        "train": IndexedSubset(fit_base, train_idx.tolist(), train_labels[train_idx])
    }
    labels = [train_labels]
    for name, given, idx in (("val", val, val_idx), ("test", test, test_idx)):
        if given is None:
            parts[name] = IndexedSubset(base, idx.tolist(), train_labels[idx])
        else:
            y = _labels(given, name)
            labels.append(y)
            parts[name] = _Indexed(given, y)
    num_classes = _num_classes(train, labels)
    for name, y in zip(("train", "val", "test"), labels, strict=False):
        if len(y) and int(y.max()) >= num_classes:
            raise UserDataError(
                f"the {name} split has label {int(y.max())}, but the data has {num_classes} classes"
            )
    shape = _item_shape(parts["train"], "train")
    return Splits(parts["train"], parts["val"], parts["test"], num_classes, shape)


def user_splits(result: Any, *, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Splits from what a user's data factory returned (see the module docstring)."""
    if isinstance(result, Mapping):
        unknown = sorted(set(result) - {"train", "val", "test"})
        if unknown or "train" not in result:
            raise UserDataError(
                "a dict of splits has the keys `train` and optionally `val`, `test`; got "
                + ", ".join(f"`{k}`" for k in result)
            )
        found = (result["train"], result.get("val"), result.get("test"))
    elif isinstance(result, tuple) and len(result) in (2, 3):
        found = (result[0], None, result[1]) if len(result) == 2 else tuple(result)
    elif _is_dataset(result):
        found = (result, None, None)
    else:
        raise UserDataError(
            f"returned {type(result).__name__}; a data factory returns a Dataset, "
            "a tuple (train, test) or (train, val, test), or a dict of them"
        )
    for name, ds in zip(("train", "val", "test"), found, strict=True):
        if ds is not None and not _is_dataset(ds):
            raise UserDataError(f"the {name} split is a {type(ds).__name__}, not a Dataset")
    return splits_from_datasets(
        *found, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
