"""A tiny digits distillation set-up shared by the framework integration tests."""

from __future__ import annotations

from typing import Any

import torch

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.data import digits_splits
from kdspec.zoo import build_model


def digits_distiller(spec: str = "fitnets", **overrides: Any) -> tuple[Any, Any, Any, Any]:
    """(distiller, teacher, student, train split): an untrained zoo pair on digits."""
    torch.manual_seed(0)
    splits = digits_splits(seed=0)
    teacher, student = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)
    x = torch.stack([splits.train[i][0] for i in range(8)])
    y = torch.tensor([int(splits.train[i][1]) for i in range(8)])
    d = compile_spec(load_method(spec, overrides=overrides), {"t": teacher, "s": student}, (x, y))
    return d, teacher, student, splits.train


def subset(dataset: Any, n: int) -> list[Any]:
    return [dataset[i] for i in range(n)]
