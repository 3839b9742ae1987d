"""Data views (modifications) and subsets (partitions) at run time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kdspec.ir import models as ir
from kdspec.ir.evaluate import evaluate


class SameClassSampler:
    """Draws, for every sample of a batch, another training sample of the same class (CS-KD)."""

    def __init__(self, dataset: Any, seed: int = 0):
        self.dataset = dataset
        labels = _labels_of(dataset)
        self.by_class: dict[int, torch.Tensor] = {}
        for c in labels.unique().tolist():
            self.by_class[int(c)] = (labels == c).nonzero().flatten()
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        picks = []
        for y in labels.tolist():
            pool = self.by_class[int(y)]
            picks.append(int(pool[torch.randint(len(pool), (1,), generator=self.generator)]))
        items = [self.dataset[i][0] for i in picks]
        return torch.stack(items).to(x)


def _labels_of(dataset: Any) -> torch.Tensor:
    for attr in ("targets", "y", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return torch.as_tensor(value)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def make_view(
    part: ir.DataPart | None, params: dict[str, ir.Expr], train_data: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(x, labels) -> x'`` for a named view (unbound views leave x as is)."""
    if part is None or part.func in (None, "clean"):
        return lambda x, y: x
    kw: dict[str, Any] = {k: evaluate(v, params) for k, v in part.kwargs.items()}
    copies = int(kw.pop("k", 4 if part.func == "rotations" else 1))
    if part.func == "rotations":
        return _rotations(copies)
    one = _one_view(part, kw, train_data)
    if copies == 1:
        return one
    # k views of each sample, view-major: view 0 of every sample, then view 1, ...
    return lambda x, y: torch.cat([one(x, y) for _ in range(copies)])


def _rotations(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if k not in (1, 2, 3, 4):
        raise ValueError(f"`rotations(k={k})`: k is 1, 2, 3 or 4 quarter turns")

    def rotate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"`rotations` turns square images, and the input is {list(x.shape[1:])}"
            )
        return torch.cat([torch.rot90(x, i, dims=(-2, -1)) for i in range(k)])

    return rotate


def _one_view(
    part: ir.DataPart, kw: dict[str, Any], train_data: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if part.func == "gaussian_noise":
        std = float(kw.get("std", 0.1))
        return lambda x, y: x + std * torch.randn_like(x)
    if part.func == "augment":
        strength = float(kw.get("strength", 1.0))

        def augment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if x.dim() < 4:
                return x + 0.05 * strength * torch.randn_like(x)
            shift = max(1, round(strength))
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,)))
            out = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            return out + 0.05 * strength * torch.randn_like(out)

        return augment
    if part.func == "same_class":
        if train_data is None:
            raise ValueError("the `same_class` view needs the training data")
        return SameClassSampler(train_data)
    raise ValueError(f"unknown view function `{part.func}`")


def make_subset(
    part: ir.DataPart, params: dict[str, ir.Expr]
) -> Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]:
    """A function ``(labels, index) -> bool mask`` selecting a subset's rows in a batch."""
    if part.func in ("exclude_classes", "only_classes"):
        classes: list[int] = []
        for a in part.args:
            v = evaluate(a, params)
            classes.extend(int(c) for c in (v if isinstance(v, list) else [v]))  # type: ignore[call-overload]
        only = part.func == "only_classes"

        def by_class(labels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
            assert labels is not None
            hit = torch.isin(labels, torch.tensor(classes, device=labels.device))
            return hit if only else ~hit

        return by_class
    if part.func is None:  # bound by the run; unbound, the subset is the whole batch

        def everything(labels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
            ref = labels if labels is not None else index
            assert ref is not None
            return torch.ones(len(ref), dtype=torch.bool, device=ref.device)

        return everything
    if part.func == "fraction":
        p = float(evaluate(part.kwargs["p"], params)) if "p" in part.kwargs else 1.0  # type: ignore[arg-type]

        def by_index(labels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
            if index is None:
                raise ValueError("a `fraction` subset needs sample indices in the batch")
            # A fixed pseudo-random subset: Knuth's multiplicative hash of the sample index.
            h = (index.long() * 2654435761) % (2**32)
            return (h.double() / 2**32) < p

        return by_index
    raise ValueError(f"unknown subset function `{part.func}`")
