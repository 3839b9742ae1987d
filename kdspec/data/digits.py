"""The embedded default data: 1797 real 8x8 handwritten digits (UCI, via scikit-learn).

``digits.csv.gz`` is scikit-learn's copy of the data (see ``DIGITS_LICENSE.txt``); it is read
with the standard library, so scikit-learn is not a dependency.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
from importlib import resources

import torch
from torch import Tensor

from kdspec.data.splits import IndexedTensorDataset, Splits, stratified_split

__all__ = ["DIGITS_CLASSES", "DIGITS_SHAPE", "digits_splits", "load_digits_tensors"]

DIGITS_CLASSES = 10
DIGITS_SHAPE = (1, 8, 8)
_N_PIXELS = 64
# Pixel values count "on" pixels in 4x4 blocks, so they lie in 0..16.
_MAX_PIXEL = 16.0


@functools.lru_cache(maxsize=1)
def _read_digits() -> tuple[Tensor, Tensor]:
    raw = resources.files(__package__).joinpath("digits.csv.gz").read_bytes()
    with gzip.open(io.BytesIO(raw), "rt", newline="") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f) if row]
    if not rows or any(len(r) != _N_PIXELS + 1 for r in rows):
        raise RuntimeError("embedded digits.csv.gz is corrupt: expected 65 integers per row")
    data = torch.tensor(rows, dtype=torch.int64)  # [N, 65]
    images = data[:, :_N_PIXELS].to(torch.float32).div_(_MAX_PIXEL).view(-1, *DIGITS_SHAPE)
    return images, data[:, _N_PIXELS].contiguous()


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """Load all 1797 digits.

    Returns:
        ``(images, labels)``: float32 images ``[1797, 1, 8, 8]`` in ``[0, 1]`` and int64 labels
        ``[1797]`` in ``0..9``, in file order. The tensors are fresh copies.

    Example:
        >>> images, labels = load_digits_tensors()
        >>> tuple(images.shape), labels.dtype
        ((1797, 1, 8, 8), torch.int64)
    """
    images, labels = _read_digits()
    return images.clone(), labels.clone()


def digits_splits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> Splits:
    """Stratified train/val/test splits of the digits.

    Args:
        seed: Seed of the split; the same seed always gives the same split.
        val_fraction: Fraction of each class for validation.
        test_fraction: Fraction of each class for test.

    Returns:
        Splits with ``num_classes == 10`` and ``input_shape == (1, 8, 8)``; each split is an
        :class:`IndexedTensorDataset` whose ``source_index`` points into
        :func:`load_digits_tensors`.

    Raises:
        ValueError: If the fractions are negative or leave no training data.

    Example:
        >>> s = digits_splits(seed=0)
        >>> len(s.train) + len(s.val) + len(s.test)
        1797
    """
    images, labels = load_digits_tensors()
    train, val, test = stratified_split(labels, val_fraction, test_fraction, seed)
    return Splits(
        train=IndexedTensorDataset(images[train], labels[train], train),
        val=IndexedTensorDataset(images[val], labels[val], val),
        test=IndexedTensorDataset(images[test], labels[test], test),
        num_classes=DIGITS_CLASSES,
        input_shape=DIGITS_SHAPE,
    )
