"""Sequence-level KD's teacher generations on disk: generated once, reused by later runs.

``[data]`` and the teacher decide what a teacher generates for each training sample, so
:class:`GenerationFile` keeps them in one file beside the teacher cache
(``<cache dir>/generations/<key>.pt``) whose name is the sha256 of everything that determines
them: the teacher's weights, the data's identity (``[data]`` settings, the text's fingerprint,
the number of training samples), the view's ``max_new_tokens``, ``temperature`` and end/pad ids,
and the run's seed (sampling is seeded by it). The file is written atomically (a reader never
sees half of it); an unreadable or mismatched file is reported and regenerated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdspec.compiler.teacher_cache import weights_fingerprint
from kdspec.compiler.views import TeacherGenerations
from kdspec.runtime import distributed
from kdspec.runtime.files import atomic_write

__all__ = ["FORMAT", "GenerationFile"]

FORMAT = 1  # bump when the file's layout changes


class GenerationFile:
    """The disk store of a :class:`~kdspec.compiler.views.TeacherGenerations` view.

    Args:
        folder: Where the files live (``<cache dir>/generations``).
        identity: What determines the training samples (data settings and fingerprint).
        log: Where one-line messages go (read, written, rebuilt).
    """

    def __init__(
        self, folder: Path, identity: dict[str, Any], log: Callable[[str], None] | None = None
    ) -> None:
        self.folder = folder
        self.identity = identity
        self.log = log or (lambda _: None)
        self._teacher: str | None = None

    def key_fields(self, view: TeacherGenerations, model: Any) -> dict[str, Any]:
        """Everything that determines the generations (hashed into the file name)."""
        if self._teacher is None:  # the generating role is frozen: hashed once
            self._teacher = weights_fingerprint(model)
        return {
            "format": FORMAT,
            "teacher": self._teacher,
            "generation": view.key_fields(),
            "data": self.identity,
        }

    def path(self, view: TeacherGenerations, model: Any) -> Path:
        """The file of these generations."""
        text = json.dumps(self.key_fields(view, model), sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt"

    def load(self, view: TeacherGenerations, model: Any) -> dict[int, torch.Tensor]:
        """The stored generations by sample index (none when there is no usable file)."""
        path = self.path(view, model)
        if not path.exists():
            return {}
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            samples = _unpack(data, self.key_fields(view, model))
        except Exception as exc:  # a corrupt or foreign file: generate again, never crash
            self.log(f"teacher generations: {path} is unusable ({exc}); generating them again")
            return {}
        self.log(f"teacher generations: {len(samples)} read from {path}")
        return samples

    def save(self, view: TeacherGenerations, model: Any, samples: dict[int, torch.Tensor]) -> None:
        """Write ``samples`` (prompt + generation per sample index) atomically."""
        if not distributed.is_main() or not samples:
            return
        path = self.path(view, model)
        order = sorted(samples)
        data = {
            "key": json.dumps(self.key_fields(view, model), sort_keys=True, default=str),
            "index": torch.tensor(order, dtype=torch.long),
            "lengths": torch.tensor([len(samples[i]) for i in order], dtype=torch.long),
            "tokens": torch.cat([samples[i].long().flatten() for i in order]),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(data, tmp))
        except OSError as exc:  # the cache only saves time: training goes on without it
            self.log(f"teacher generations: cannot write {path} ({exc}); kept in memory only")
            return
        self.log(f"teacher generations: {len(samples)} written to {path}")


def _unpack(data: Any, key: dict[str, Any]) -> dict[int, torch.Tensor]:
    """Sample index -> tokens of a stored file; ValueError when it is not what ``key`` names."""
    if not isinstance(data, dict) or set(data) != {"key", "index", "lengths", "tokens"}:
        raise ValueError("not a generations file")
    if data["key"] != json.dumps(key, sort_keys=True, default=str):
        raise ValueError("made for other settings")
    index, lengths, tokens = data["index"], data["lengths"], data["tokens"]
    if index.shape != lengths.shape or int(lengths.sum()) != tokens.numel():
        raise ValueError("truncated")
    parts = torch.split(tokens, lengths.tolist())
    return {int(i): p.clone() for i, p in zip(index.tolist(), parts, strict=True)}
