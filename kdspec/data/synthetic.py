"""Random, learnable data for tests that need a dataset of a given shape."""

from __future__ import annotations

import torch

from kdspec.data.splits import IndexedTensorDataset, Splits, stratified_split

__all__ = ["synthetic_splits"]


def synthetic_splits(
    n: int = 256,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (3, 32, 32),
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Splits:
    """Random Gaussian data split like :func:`~kdspec.data.digits_splits`.

    Each class has a random prototype and ``x = 0.5 * prototype[y] + noise``, so a model can
    learn the task; classes are balanced (``y = i mod num_classes`` before shuffling).

    Args:
        n: Total number of samples.
        num_classes: Number of classes.
        input_shape: Shape of one input.
        seed: Seed of both the data and the split.
        val_fraction: Fraction of each class for validation.
        test_fraction: Fraction of each class for test.

    Returns:
        Splits of :class:`~kdspec.data.IndexedTensorDataset` items ``(x, y, index)``.

    Raises:
        ValueError: If ``n`` or ``num_classes`` is not positive, or the fractions are invalid.
    """
    if n <= 0 or num_classes <= 0:
        raise ValueError(f"n and num_classes must be positive, got {n} and {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # [n]
    prototypes = torch.randn(num_classes, *input_shape, generator=gen)  # [K, *input_shape]
    x = 0.5 * prototypes[y] + torch.randn(n, *input_shape, generator=gen)  # [n, *input_shape]
    train, val, test = stratified_split(y, val_fraction, test_fraction, seed)
    return Splits(
        train=IndexedTensorDataset(x[train], y[train], train),
        val=IndexedTensorDataset(x[val], y[val], val),
        test=IndexedTensorDataset(x[test], y[test], test),
        num_classes=num_classes,
        input_shape=tuple(input_shape),
    )
