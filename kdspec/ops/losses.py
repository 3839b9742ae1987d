"""Losses still written in Python: ``loss(teacher_or_target, student, **params) -> scalar``.

Every other loss of the library is a ``def`` of the prelude (``kdspec/prelude/losses.kd``),
written in kdspec from its primitives; learned losses (CRD's memory bank, SemCKD's attention)
are modules in :mod:`kdspec.ops.components`. The compiler looks these up by name in
:data:`LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "cross_entropy"]


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Hard-label cross-entropy (``F.cross_entropy``, mean over samples).

    Args:
        logits: ``[B, C]``; ``[B, L, C]`` token logits are flattened to ``[B*L, C]``.
        labels: int64 ``[B]`` (``[B, L]`` for tokens); ``-100`` is ignored.
        label_smoothing: As ``F.cross_entropy``.

    Returns:
        Scalar.
    """
    if logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


LOSSES: dict[str, Callable[..., Any]] = {"cross_entropy": cross_entropy}
"""Every loss written in Python, by its spec name."""
