"""Random augmentation whose parameters are explicit, so a teacher's outputs stay cacheable.

:class:`CropFlip` is the run file's random crop + horizontal flip (``[data] augment``) written
on tensors: it equals torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``
applied before ``ToTensor`` + ``Normalize``, when ``fill`` is what the padding's zeros become
after normalisation (``-mean / std`` per channel). :class:`ReplayedAugmentation` draws a fixed
set of ``replays`` parameter sets per sample once (from a seed) and, on every read, applies one
of them chosen at random, as FKD does with its stored crops: the teacher's output for
``(sample, replay)`` is then the same every epoch, and the batch says which replay each sample
drew (its fourth element).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CropFlip", "ReplayedAugmentation"]


class CropFlip:
    """Random crop of ``size`` from the input padded by ``padding``, then a random flip.

    Parameters of one application: ``(top, left, flip)`` with ``0 <= top, left <= 2*padding
    + H - size`` and ``flip`` in {0, 1}.

    Args:
        size: Side of the crop (None: no crop, flip only).
        padding: Pixels added on each side before cropping.
        fill: Value of the padding, per channel (a sequence) or for all channels.
        flip: Flip horizontally with probability 1/2.
    """

    def __init__(
        self,
        size: int | None,
        padding: int = 0,
        fill: float | Sequence[float] = 0.0,
        flip: bool = True,
    ) -> None:
        self.size = size
        self.padding = padding if size is not None else 0
        self.fill = [float(f) for f in fill] if isinstance(fill, Sequence) else float(fill)
        self.flip = flip

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """``[n, 3]`` parameter sets for inputs of ``height x width``."""
        if self.size is None:
            top = left = torch.zeros(n, dtype=torch.long)
        else:
            p = self.padding
            top = torch.randint(height + 2 * p - self.size + 1, (n,), generator=generator)
            left = torch.randint(width + 2 * p - self.size + 1, (n,), generator=generator)
        flip = torch.randint(2, (n,), generator=generator) if self.flip else torch.zeros_like(top)
        return torch.stack([top, left, flip], dim=1)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        """``x`` ``[C, H, W]`` augmented with one parameter set."""
        top, left, flip = (int(v) for v in params)
        if self.size is not None:
            p = self.padding
            c, h, w = x.shape
            fill = torch.as_tensor(self.fill, dtype=x.dtype).reshape(-1, 1, 1)
            padded = fill.expand(c, h + 2 * p, w + 2 * p).clone()
            padded[:, p : p + h, p : p + w] = x
            x = padded[:, top : top + self.size, left : left + self.size]
        return x.flip(-1) if flip else x

    def key(self) -> dict[str, Any]:
        """What determines this augmentation's outputs (part of cache keys)."""
        return {"crop": self.size, "padding": self.padding, "fill": self.fill, "flip": self.flip}


class ReplayedAugmentation(Dataset[tuple[Any, Any, int, int]]):
    """Items ``(augmented x, y, index, replay)``: sample ``i`` augmented with one of its
    ``replays`` parameter sets, drawn once from ``seed`` and chosen at random on each read.

    Args:
        base: Un-augmented items ``(x [C, H, W], y, index)``.
        augment: The augmentation.
        replays: Parameter sets kept per sample.
        seed: Seed of the parameter sets.
    """

    def __init__(self, base: Dataset[Any], augment: CropFlip, replays: int, seed: int) -> None:
        if replays < 1:
            raise ValueError("replays must be at least 1")
        self.base = base
        self.augment = augment
        self.replays = replays
        self.seed = seed
        self.targets = getattr(base, "targets", None)
        n = len(base)  # type: ignore[arg-type]
        _, h, w = base[0][0].shape
        gen = torch.Generator().manual_seed(seed)
        self.params = augment.sample(n * replays, h, w, gen).view(n, replays, 3)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int, int]:
        x, y, index, *_ = self.base[i]
        r = int(torch.randint(self.replays, (1,)))
        return self.augment.apply(x, self.params[int(i), r]), y, index, r

    def key(self) -> dict[str, Any]:
        """What determines the inputs besides the sample (part of cache keys)."""
        return {**self.augment.key(), "replays": self.replays, "seed": self.seed}
