"""The data of a run: splits from ``[data]``, the transfer set, and seeded loaders."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdspec.data import (
    IndexedSubset,
    Splits,
    digits_splits,
    exclude_classes,
    stratified_split,
    synthetic_splits,
    torchvision_dataset,
)
from kdspec.diagnostics import KdError
from kdspec.runtime.runfile import Run

__all__ = ["RunData", "build_data", "eval_loader", "train_loader"]

_SOURCES = ("digits", "synthetic", "torchvision:CIFAR100", "torchvision:CIFAR10")


@dataclass(frozen=True)
class RunData:
    """Everything a run reads.

    Attributes:
        splits: train (all classes: what a teacher learns from), val and test.
        transfer: the training data of the distillation (``splits.train`` less
            ``[data].exclude_classes``).
    """

    splits: Splits
    transfer: Dataset[Any]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.splits.num_classes

    @property
    def in_channels(self) -> int:
        """Input channels (the first dimension of one input)."""
        return self.splits.input_shape[0]


def build_data(run: Run) -> RunData:
    """Build the splits named by ``[data]``.

    Raises:
        KdError: KD502 for an unknown source, a missing package or missing files.
    """
    cfg = run.config.data
    src = cfg.source
    if src == "digits":
        splits = digits_splits(cfg.seed, cfg.val_fraction, cfg.test_fraction)
    elif src == "synthetic":
        splits = synthetic_splits(
            cfg.n,
            cfg.num_classes,
            tuple(cfg.input_shape),
            cfg.seed,
            cfg.val_fraction,
            cfg.test_fraction,
        )
    elif src.startswith("torchvision:"):
        splits = _torchvision_splits(run)
    else:
        close = difflib.get_close_matches(src, _SOURCES, n=1)
        raise KdError(
            [
                run.diagnostic(
                    "KD502",
                    f"unknown data source `{src}`",
                    ("data", "source"),
                    label="unknown source",
                    help=(f"did you mean `{close[0]}`? " if close else "")
                    + "sources: "
                    + ", ".join(f"`{s}`" for s in _SOURCES),
                )
            ]
        )
    transfer = exclude_classes(splits.train, cfg.exclude_classes) if cfg.exclude_classes else None
    return RunData(splits, transfer if transfer is not None else splits.train)


def _torchvision_splits(run: Run) -> Splits:
    cfg = run.config.data
    name = cfg.source.partition(":")[2]
    if cfg.root is None:
        raise KdError(
            [
                run.diagnostic(
                    "KD502",
                    f"data source `{cfg.source}` needs `root`, the folder holding the files",
                    ("data", "source"),
                    help='add `root = "path/to/data"` to `[data]` (kdspec never downloads)',
                )
            ]
        )
    root = str(run.resolve_path(cfg.root))
    try:
        train_aug = torchvision_dataset(name, root, train=True, augment=cfg.augment)
        train_plain = torchvision_dataset(name, root, train=True, augment=False)
        test = torchvision_dataset(name, root, train=False)
    except (RuntimeError, ValueError) as exc:
        raise KdError(
            [run.diagnostic("KD502", f"cannot load `{cfg.source}`: {exc}", ("data", "source"))]
        ) from None
    targets = torch.as_tensor(train_plain.targets)
    train_idx, val_idx, _ = stratified_split(targets, cfg.val_fraction, 0.0, cfg.seed)
    num_classes = int(targets.max()) + 1
    x0 = test[0][0]
    return Splits(
        train=IndexedSubset(train_aug, train_idx.tolist(), targets[train_idx]),
        val=IndexedSubset(train_plain, val_idx.tolist(), targets[val_idx]),
        test=test,
        num_classes=num_classes,
        input_shape=tuple(x0.shape),
    )


def train_loader(dataset: Dataset[Any], batch_size: int, seed: int) -> DataLoader[Any]:
    """A shuffling loader whose order depends on ``seed`` only (``num_workers=0``).

    The generator is exposed as ``loader.generator`` so a checkpoint can save its state.
    """
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=0)


def eval_loader(dataset: Dataset[Any], batch_size: int) -> DataLoader[Any]:
    """A loader in dataset order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
