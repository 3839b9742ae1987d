"""Losses written in Python: ``loss(teacher_or_target, student, **params) -> scalar``.

Every loss of the library is a ``def`` of the prelude (``kdspec/prelude/losses.kd``), written in
kdspec from its primitives; learned losses (CRD's memory bank, SemCKD's attention) are modules
in :mod:`kdspec.ops.components`. :data:`LOSSES` stays the place for a loss that cannot be
written from the primitives: the compiler looks one up by name there (a one-input loss takes
the student side and the labels, as ``supervise`` gives them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LOSSES"]

LOSSES: dict[str, Callable[..., Any]] = {}
"""Every loss written in Python, by its spec name (none today)."""
