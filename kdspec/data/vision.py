"""Optional torchvision datasets (CIFAR-10/100), wrapped to yield ``(x, y, index)``.

torchvision is not part of the default install, so it is imported only when asked for.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from kdspec.data.augment import CropFlip
from kdspec.data.splits import Splits
from kdspec.data.user import UserDataError, splits_from_datasets

__all__ = [
    "IMAGENET_STATS",
    "IndexedDataset",
    "crop_flip",
    "image_folder_splits",
    "torchvision_dataset",
]

# Normalisation of image folders (the statistics most pretrained vision models expect).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

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


def crop_flip(source: str, image_size: int | None = None) -> CropFlip:
    """The crop + flip of a source's ``augment``, on normalised tensors (see :class:`CropFlip`).

    ``torchvision:CIFAR10``/``CIFAR100``: crop 32 with padding 4, then flip;
    ``torchvision:ImageFolder``: flip, and with ``image_size`` a crop with padding
    ``image_size // 8`` first. The padding's zeros become ``-mean / std`` once normalised.
    """
    key = source.partition(":")[2].lower()
    mean, std = _STATS.get(key, IMAGENET_STATS)
    fill = [-m / s for m, s in zip(mean, std, strict=True)]
    if key in _STATS:
        return CropFlip(32, 4, fill)
    return CropFlip(image_size, image_size // 8 if image_size else 0, fill)


def _torchvision(what: str) -> Any:
    try:
        import torchvision
    except ImportError as exc:
        raise RuntimeError(
            f"{what} needs torchvision, which is not installed; install the build "
            f"matching torch {torch.__version__} with `pip install torchvision` (CPU-only torch: "
            "add `--index-url https://download.pytorch.org/whl/cpu`)"
        ) from exc
    return torchvision


def image_folder_splits(
    root: str | Path,
    *,
    image_size: int | None,
    augment: bool,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Splits:
    """Train/val/test from a folder of images in torchvision's ``ImageFolder`` layout.

    ``root/train/<class>/*.png`` (with optional ``root/val/`` and ``root/test/`` beside it),
    or ``root/<class>/*.png`` alone; missing splits are cut from train per class. Images are
    resized to ``image_size`` (when given), scaled to [0, 1] and normalised with
    :data:`IMAGENET_STATS`; with ``augment`` the training images are also flipped
    horizontally (and, with ``image_size``, randomly cropped with padding ``image_size // 8``).

    Raises:
        RuntimeError: torchvision is not installed.
        UserDataError: Missing folder, classes that differ between splits, unusable items.
    """
    tv = _torchvision("`torchvision:ImageFolder`")
    transforms = tv.transforms
    folder = Path(root)
    if not folder.is_dir():
        raise UserDataError(f"image folder `{folder}` does not exist")
    base: list[Any] = [transforms.Resize((image_size, image_size))] if image_size else []
    tail = [transforms.ToTensor(), transforms.Normalize(*IMAGENET_STATS)]
    aug: list[Any] = [transforms.RandomHorizontalFlip()]
    if image_size:
        aug.insert(0, transforms.RandomCrop(image_size, padding=image_size // 8))
    plain_tf = transforms.Compose(base + tail)
    aug_tf = transforms.Compose(base + (aug if augment else []) + tail)

    def load(path: Path, tf: Any) -> Any:
        try:
            return tv.datasets.ImageFolder(str(path), transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserDataError(f"cannot read image folder `{path}`: {exc}") from None

    top = folder / "train" if (folder / "train").is_dir() else folder
    train = load(top, plain_tf)
    found = {n: load(folder / n, plain_tf) for n in ("val", "test") if (folder / n).is_dir()}
    if top == folder and found:
        raise UserDataError(f"`{folder}` has `val`/`test` folders but no `train` folder")
    for name, ds in found.items():
        if list(ds.classes) != list(train.classes):
            raise UserDataError(
                f"the classes of `{folder / name}` differ from those of `{top}` "
                f"({len(ds.classes)} vs {len(train.classes)} class folders)"
            )
    return splits_from_datasets(
        train,
        found.get("val"),
        found.get("test"),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        augmented=load(top, aug_tf) if augment else None,
    )


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
    torchvision = _torchvision(f"dataset `{name}`")
    transforms = torchvision.transforms

    mean, std = _STATS[key]
    steps: list[Any] = []
    if train if augment is None else augment:
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    cls = getattr(torchvision.datasets, _CLASSES[key])
    base = cls(root=root, train=train, download=download, transform=transforms.Compose(steps))
    return IndexedDataset(base)
