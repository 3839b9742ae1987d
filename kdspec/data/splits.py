"""Indexed datasets, stratified splits and class-subset helpers.

Every dataset in :mod:`kdspec.data` yields ``(x, y, index)`` where ``index`` is the item's
position within that dataset, so CRD-style memory banks can address samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IndexedSubset",
    "IndexedTensorDataset",
    "Splits",
    "exclude_classes",
    "only_classes",
    "stratified_split",
]


class IndexedTensorDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """In-memory dataset whose items are ``(x[i], y[i], i)``.

    Args:
        x: Inputs ``[N, *input_shape]``.
        y: Integer labels ``[N]``.
        source_index: Position of each item in the dataset it was cut from ``[N]``; defaults
            to ``arange(N)``. Only for bookkeeping; items carry their own position ``i``.

    Raises:
        ValueError: If the lengths of ``x``, ``y`` and ``source_index`` differ.
    """

    def __init__(self, x: Tensor, y: Tensor, source_index: Tensor | None = None) -> None:
        if source_index is None:
            source_index = torch.arange(len(y))
        if not len(x) == len(y) == len(source_index):
            raise ValueError(
                f"x, y and source_index lengths differ: {len(x)}, {len(y)}, {len(source_index)}"
            )
        self.x = x
        self.y = y
        self.source_index = source_index

    @property
    def targets(self) -> Tensor:
        """Labels ``[N]`` (torchvision's attribute name)."""
        return self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        return self.x[i], self.y[i], i


class IndexedSubset(Dataset[tuple[Any, Any, int]]):
    """View of ``positions`` of an ``(x, y, index)`` dataset, re-indexed from 0.

    Args:
        base: Dataset yielding ``(x, y, index)`` items.
        positions: Positions in ``base`` to keep, in order.
        targets: Labels of the kept items ``[len(positions)]``.
    """

    def __init__(self, base: Dataset[Any], positions: Sequence[int], targets: Tensor) -> None:
        self.base = base
        self.positions = list(positions)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        x, y, *_ = self.base[self.positions[i]]
        return x, y, i


@dataclass(frozen=True)
class Splits:
    """Train/validation/test datasets of one task.

    Attributes:
        train: Training set; items are ``(x, y, index)``.
        val: Validation set (model selection, early stopping).
        test: Held-out test set.
        num_classes: Number of classes.
        input_shape: Shape of one input, e.g. ``(1, 8, 8)``.
    """

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    num_classes: int
    input_shape: tuple[int, ...]


def stratified_split(
    labels: Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Split positions into train/val/test, keeping class proportions.

    Each class contributes ``round(fraction * count)`` items to val and to test; the rest go
    to train. Every returned index tensor is sorted.

    Args:
        labels: Integer labels ``[N]``.
        val_fraction: Fraction of each class for validation.
        test_fraction: Fraction of each class for test.
        seed: Seed of the shuffle within each class.

    Returns:
        Index tensors ``(train, val, test)`` into ``labels``.

    Raises:
        ValueError: If a fraction is negative or they do not leave room for training data.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must be >= 0 and sum to < 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    gen = torch.Generator().manual_seed(seed)
    parts: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        # Round half up, not to even, so sizes do not depend on the parity of a count.
        n_test = math.floor(test_fraction * len(idx) + 0.5)
        n_val = math.floor(val_fraction * len(idx) + 0.5)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (torch.sort(torch.cat(p)).values for p in parts)
    return train, val, test


def _labels(dataset: Dataset[Any]) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    # Fallback: read every item (slow for image folders, fine for tensors).
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def _select(dataset: Dataset[Any], keep: Tensor) -> Dataset[Any]:
    if isinstance(dataset, IndexedTensorDataset):
        return IndexedTensorDataset(dataset.x[keep], dataset.y[keep], dataset.source_index[keep])
    positions = torch.nonzero(keep).flatten()
    return IndexedSubset(dataset, positions.tolist(), _labels(dataset)[keep])


def exclude_classes(dataset: Dataset[Any], classes: Iterable[int]) -> Dataset[Any]:
    """Drop every item whose label is in ``classes``.

    Labels are not renumbered (a teacher keeps its output layout); item indices are renumbered
    ``0..len-1`` within the result. Typical use: a transfer set without digit 3.

    Args:
        dataset: Dataset yielding ``(x, y, index)`` items.
        classes: Labels to remove.

    Returns:
        A dataset yielding ``(x, y, index)`` items.
    """
    labels = _labels(dataset)
    return _select(dataset, ~torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype)))


def only_classes(dataset: Dataset[Any], classes: Iterable[int]) -> Dataset[Any]:
    """Keep only the items whose label is in ``classes``.

    Labels are not renumbered; item indices are renumbered ``0..len-1`` within the result.

    Args:
        dataset: Dataset yielding ``(x, y, index)`` items.
        classes: Labels to keep.

    Returns:
        A dataset yielding ``(x, y, index)`` items.
    """
    labels = _labels(dataset)
    return _select(dataset, torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype)))
