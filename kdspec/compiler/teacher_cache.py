"""In-memory cache of what frozen roles' taps produce, per training sample.

A frozen teacher computes the same tapped tensors for a sample every epoch as long as its input
is the same: then they are computed once and read back (by the batch's sample indices) instead
of running the teacher again. Only roles whose weights never change (``frozen``), on
deterministic views, are cached; random views are refused when the cache is turned on (the
loader's own augmentation is the caller's to rule out: :meth:`Distiller.cache_frozen_outputs`).
"""

from __future__ import annotations

from typing import Any

import torch

from kdspec.compiler.hooks import HookPoint

# View functions whose output depends only on the sample (see ``views.make_view``).
DETERMINISTIC_VIEWS = frozenset({None, "clean"})


class CacheError(ValueError):
    """The cache cannot hold a value exactly (no sample indices, a non-tensor tap)."""


class TeacherCache:
    """Tapped values per ``(role, view, point)``, one row per sample index (exact, fp32 kept)."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self._rows: dict[tuple[str, str | None, HookPoint], torch.Tensor] = {}
        self._filled: dict[tuple[str, str | None, HookPoint], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._rows.clear()
        self._filled.clear()

    def lookup(
        self, role: str, view: str | None, points: list[HookPoint], index: torch.Tensor
    ) -> dict[HookPoint, torch.Tensor] | None:
        """The batch's values if every sample of it is cached for every point, else None."""
        keys = [(role, view, p) for p in points]
        if not keys or not all(
            k in self._rows and bool(self._filled[k][index.cpu()].all()) for k in keys
        ):
            self.misses += 1
            return None
        self.hits += 1
        return {k[2]: self._rows[k][index] for k in keys}

    def store(
        self, role: str, view: str | None, values: dict[HookPoint, Any], index: torch.Tensor
    ) -> None:
        """Keep one batch's values (detached) under its sample indices."""
        n = index.shape[0]
        for p, v in values.items():
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n:
                raise CacheError(
                    f"`{p.path or p.kind}` of `{role}` is not one tensor with a row per sample; "
                    "it cannot be cached"
                )
            key = (role, view, p)
            rows = self._rows.get(key)
            if rows is None or rows.shape[1:] != v.shape[1:] or rows.dtype != v.dtype:
                rows = torch.empty((self.num_samples, *v.shape[1:]), dtype=v.dtype, device=v.device)
                self._rows[key] = rows
                self._filled[key] = torch.zeros(self.num_samples, dtype=torch.bool)
            rows[index] = v.detach()
            self._filled[key][index.cpu()] = True
