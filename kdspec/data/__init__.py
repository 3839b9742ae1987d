"""Datasets for kdspec: the embedded digits, synthetic data, and optional torchvision data.

Every dataset yields ``(x, y, index)`` where ``index`` is the item's position within that
dataset (CRD-style memory banks need it). :class:`Splits` bundles train/val/test with
``num_classes`` and ``input_shape``.

Example:
    >>> from kdspec.data import digits_splits, exclude_classes
    >>> splits = digits_splits(seed=0)
    >>> transfer = exclude_classes(splits.train, [3])
    >>> bool((transfer.targets == 3).any())
    False
"""

from __future__ import annotations

from kdspec.data.digits import DIGITS_CLASSES, DIGITS_SHAPE, digits_splits, load_digits_tensors
from kdspec.data.splits import (
    IndexedSubset,
    IndexedTensorDataset,
    Splits,
    exclude_classes,
    only_classes,
    stratified_split,
)
from kdspec.data.synthetic import synthetic_splits
from kdspec.data.vision import IndexedDataset, torchvision_dataset

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_SHAPE",
    "IndexedDataset",
    "IndexedSubset",
    "IndexedTensorDataset",
    "Splits",
    "digits_splits",
    "exclude_classes",
    "load_digits_tensors",
    "only_classes",
    "stratified_split",
    "synthetic_splits",
    "torchvision_dataset",
]
