"""Tests for the embedded digits data, synthetic splits and subset helpers."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kdspec.data import (
    IndexedDataset,
    IndexedSubset,
    IndexedTensorDataset,
    digits_splits,
    exclude_classes,
    load_digits_tensors,
    only_classes,
    synthetic_splits,
    torchvision_dataset,
)

# Class counts of the UCI optdigits test set (= sklearn.datasets.load_digits).
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def test_load_digits_tensors() -> None:
    images, labels = load_digits_tensors()
    assert images.shape == (1797, 1, 8, 8)
    assert images.dtype == torch.float32
    assert labels.shape == (1797,)
    assert labels.dtype == torch.int64
    assert images.min() == 0.0
    assert images.max() == 1.0
    assert torch.bincount(labels).tolist() == DIGIT_COUNTS
    # Values are multiples of 1/16.
    assert torch.equal(images * 16, (images * 16).round())


def test_load_digits_returns_copies() -> None:
    images, labels = load_digits_tensors()
    images.zero_()
    labels.fill_(-1)
    again, labels_again = load_digits_tensors()
    assert again.max() == 1.0
    assert labels_again.min() == 0


def test_digits_splits_sizes_and_stratification() -> None:
    s = digits_splits(seed=0)
    assert (s.num_classes, s.input_shape) == (10, (1, 8, 8))
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    for split, frac in ((s.test, 0.2), (s.val, 0.15)):
        counts = torch.bincount(split.y, minlength=10).tolist()
        assert counts == [_round_half_up(frac * c) for c in DIGIT_COUNTS]
    assert len(s.test) == pytest.approx(0.2 * 1797, abs=10)
    assert len(s.val) == pytest.approx(0.15 * 1797, abs=10)


def test_digits_splits_do_not_overlap() -> None:
    s = digits_splits(seed=3)
    parts = [set(d.source_index.tolist()) for d in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1])
    assert not (parts[0] & parts[2])
    assert not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(range(1797))
    # The items really are the digits at those source positions.
    images, labels = load_digits_tensors()
    assert torch.equal(s.val.x, images[s.val.source_index])
    assert torch.equal(s.val.y, labels[s.val.source_index])


def test_digits_splits_deterministic_per_seed() -> None:
    a, b, c = digits_splits(seed=1), digits_splits(seed=1), digits_splits(seed=2)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).source_index, getattr(b, split).source_index)
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
    assert not torch.equal(a.test.source_index, c.test.source_index)
    assert not torch.equal(a.train.source_index, c.train.source_index)


def test_items_carry_their_position() -> None:
    s = digits_splits()
    x, y, index = s.train[5]
    assert x.shape == (1, 8, 8)
    assert y.dtype == torch.int64
    assert index == 5
    assert s.train[-1][2] == len(s.train) - 1
    xb, yb, ib = next(iter(DataLoader(s.test, batch_size=16, shuffle=False)))
    assert xb.shape == (16, 1, 8, 8)
    assert yb.shape == (16,)
    assert ib.tolist() == list(range(16))


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.5, 0.5), (0.2, 0.9)])
def test_invalid_fractions(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="val_fraction and test_fraction"):
        digits_splits(val_fraction=val, test_fraction=test)


def test_synthetic_splits() -> None:
    s = synthetic_splits(n=200, num_classes=4, input_shape=(1, 8, 8), seed=7)
    assert (s.num_classes, s.input_shape) == (4, (1, 8, 8))
    assert len(s.train) + len(s.val) + len(s.test) == 200
    assert s.train.x.shape[1:] == (1, 8, 8)
    assert s.train.x.dtype == torch.float32
    assert torch.bincount(s.test.y, minlength=4).tolist() == [10, 10, 10, 10]
    x, y, index = s.val[0]
    assert x.shape == (1, 8, 8)
    assert 0 <= int(y) < 4
    assert index == 0
    again = synthetic_splits(n=200, num_classes=4, input_shape=(1, 8, 8), seed=7)
    assert torch.equal(s.train.x, again.train.x)
    other = synthetic_splits(n=200, num_classes=4, input_shape=(1, 8, 8), seed=8)
    assert not torch.equal(s.train.x[:5], other.train.x[:5])


def test_synthetic_defaults_are_cifar_shaped() -> None:
    s = synthetic_splits()
    assert s.input_shape == (3, 32, 32)
    assert s.num_classes == 10
    assert s.train[0][0].shape == (3, 32, 32)


def test_exclude_classes_removes_the_class() -> None:
    train = digits_splits().train
    transfer = exclude_classes(train, [3])
    assert isinstance(transfer, IndexedTensorDataset)
    assert not (transfer.targets == 3).any()
    assert len(transfer) == len(train) - int((train.y == 3).sum())
    assert [transfer[i][2] for i in range(len(transfer))] == list(range(len(transfer)))
    assert not any(int(transfer[i][1]) == 3 for i in range(len(transfer)))


def test_only_classes_complements_exclude() -> None:
    train = digits_splits().train
    threes = only_classes(train, {3})
    rest = exclude_classes(train, {3})
    assert set(threes.targets.tolist()) == {3}
    assert len(threes) + len(rest) == len(train)
    assert threes[len(threes) - 1][2] == len(threes) - 1
    both = only_classes(train, [1, 7])
    assert set(both.targets.tolist()) == {1, 7}


class _ListDataset(Dataset):
    """A plain (x, y) dataset without tensor storage or a `targets` attribute."""

    def __init__(self, n: int) -> None:
        self.items = [(torch.full((2,), float(i)), i % 3) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_subsets_of_generic_datasets() -> None:
    wrapped = IndexedDataset(_ListDataset(9))
    assert wrapped.targets is None
    assert wrapped[4][2] == 4
    assert wrapped[-1][2] == 8
    kept = exclude_classes(wrapped, [0])
    assert isinstance(kept, IndexedSubset)
    assert len(kept) == 6
    xs, ys, idx = zip(*(kept[i] for i in range(len(kept))), strict=True)
    assert 0 not in ys
    assert list(idx) == list(range(6))
    assert [float(x[0]) for x in xs] == [1, 2, 4, 5, 7, 8]
    assert only_classes(kept, [2]).targets.tolist() == [2, 2, 2]


def test_torchvision_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import torchvision` fail even where it is installed.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(RuntimeError, match=r"needs torchvision.*pip install torchvision"):
        torchvision_dataset("cifar100", root="/nonexistent", train=True)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
def test_torchvision_not_installed() -> None:
    with pytest.raises(RuntimeError, match="pip install torchvision"):
        torchvision_dataset("CIFAR10", root="/nonexistent", train=False)


def test_torchvision_unknown_dataset() -> None:
    with pytest.raises(ValueError, match=r"did you mean `cifar100`"):
        torchvision_dataset("cifar1000", root="/nonexistent", train=True)
