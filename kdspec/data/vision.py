"""Optional torchvision datasets (CIFAR-10/100), wrapped to yield ``(x, y, index)``.

torchvision is not part of the default install, so it is imported only when asked for.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["IndexedDataset", "torchvision_dataset"]

# Per-channel mean/std of the training images, as used by RepDistiller / CRD.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
_CLASSES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}


class IndexedDataset(Dataset[tuple[Any, Any, int]]):
    """Wrap an ``(x, y)`` dataset so its items are ``(x, y, index)``.

    Args:
        base: Any map-style dataset yielding ``(x, y)``.
    """

    def __init__(self, base: Dataset[Any]) -> None:
        self.base = base
        targets = getattr(base, "targets", None)
        self.targets = None if targets is None else torch.as_tensor(targets)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        x, y = self.base[i]
        return x, y, i


def torchvision_dataset(
    name: str,
    root: str,
    train: bool,
    *,
    augment: bool | None = None,
    download: bool = False,
) -> IndexedDataset:
    """Load a torchvision dataset with the standard CIFAR preprocessing.

    Images are normalised with the dataset's per-channel mean/std; with augmentation (the
    default for ``train=True``) they are also randomly cropped (32, padding 4) and flipped.

    Args:
        name: ``cifar10`` or ``cifar100`` (case-insensitive).
        root: Directory holding the data in torchvision's layout.
        train: Load the training split (else the test split).
        augment: Apply crop/flip augmentation; defaults to ``train``.
        download: Let torchvision download missing files (off: kdspec never fetches silently).

    Returns:
        A dataset yielding ``(image [3, 32, 32], label, index)``.

    Raises:
        RuntimeError: If torchvision is not installed (or the files are missing and
            ``download`` is off, raised by torchvision).
        ValueError: If ``name`` is not supported.
    """
    key = name.lower()
    if key not in _STATS:
        close = difflib.get_close_matches(key, list(_STATS), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ValueError(
            f"unsupported torchvision dataset `{name}`{hint} (supported: cifar10, cifar100)"
        )
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as exc:
        raise RuntimeError(
            f"dataset `{name}` needs torchvision, which is not installed; install the build "
            f"matching torch {torch.__version__} with `pip install torchvision` (CPU-only torch: "
            "add `--index-url https://download.pytorch.org/whl/cpu`)"
        ) from exc

    mean, std = _STATS[key]
    steps: list[Any] = []
    if train if augment is None else augment:
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    cls = getattr(torchvision.datasets, _CLASSES[key])
    base = cls(root=root, train=train, download=download, transform=transforms.Compose(steps))
    return IndexedDataset(base)
