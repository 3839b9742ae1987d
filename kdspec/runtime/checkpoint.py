"""The training checkpoint: where a run stands and every state it needs to continue exactly.

A checkpoint is written after every epoch (and once more, marked done, at the end of the run).
It holds the model, optimizer and gradient-scaler states, every random generator's state and the
position in the stage plan, so a resumed run continues with the numbers an uninterrupted run
would have produced. The file is a plain dict of tensors and builtins (``torch.load`` with
``weights_only=True`` reads it); :class:`Checkpoint` is its typed form.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from kdspec.diagnostics import KdError, error
from kdspec.runtime.files import atomic_write

__all__ = ["Checkpoint", "Position", "rng_state", "set_rng_state"]


@dataclass(frozen=True)
class Position:
    """Where the loop stands: stage index, repetition, and steps/epochs done in that repetition."""

    stage: int = 0
    repeat: int = 0
    steps_done: int = 0
    stage_epoch: int = 0

    def at(self, stage: int, repeat: int) -> bool:
        """Whether this position lies in repetition ``repeat`` of stage ``stage``."""
        return (self.stage, self.repeat) == (stage, repeat)

    def past(self, stage: int, repeat: int) -> bool:
        """Whether repetition ``repeat`` of stage ``stage`` was finished before this position."""
        return (stage, repeat) < (self.stage, self.repeat)


@dataclass(frozen=True)
class Checkpoint:
    """One training checkpoint (see the module docstring).

    ``fingerprint`` identifies the job (settings, stage plan, job key): a run resumes only from
    a checkpoint with its own fingerprint. ``done`` marks the checkpoint written after the last
    step; resuming from it trains nothing and only restores the model.
    """

    VERSION: ClassVar[int] = 1

    fingerprint: str
    position: Position
    global_step: int
    global_epoch: float
    elapsed: float
    best: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk (the format every kdspec version since 1 reads)."""
        return {
            "version": self.VERSION,
            "fingerprint": self.fingerprint,
            "position": asdict(self.position),
            "global_step": self.global_step,
            "global_epoch": self.global_epoch,
            "elapsed": self.elapsed,
            "best": self.best,
            "done": self.done,
            "model": self.model,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "rng": self.rng,
        }

    @classmethod
    def from_dict(cls, state: Any) -> Checkpoint:
        """The checkpoint in ``state``; ``ValueError`` when it is not a kdspec checkpoint."""
        if not isinstance(state, dict) or "position" not in state:
            raise ValueError("not a kdspec training checkpoint")
        try:
            return cls(
                fingerprint=str(state.get("fingerprint")),
                position=Position(**{k: int(v) for k, v in dict(state["position"]).items()}),
                global_step=int(state["global_step"]),
                global_epoch=float(state["global_epoch"]),
                elapsed=float(state["elapsed"]),
                best=dict(state["best"]),
                model=state["model"],
                optimizer=state.get("optimizer"),
                scaler=state.get("scaler"),
                rng=state["rng"],
                done=bool(state.get("done")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a kdspec training checkpoint (missing or bad {exc})") from None

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (a crash mid-write keeps the previous one)."""
        state = self.to_dict()
        atomic_write(path, lambda p: torch.save(state, p))

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read ``path``; KD405 (the file is left as it is) when it is not a readable checkpoint."""
        try:
            return cls.from_dict(torch.load(path, weights_only=True, map_location="cpu"))
        except Exception as exc:  # any unreadable file: a diagnostic, and the file is kept
            raise KdError(
                [
                    error(
                        "KD405",
                        f"cannot resume from `{path}`: the checkpoint is corrupt",
                        notes=(f"torch.load said: {str(exc).splitlines()[0][:200]}",),
                        help="the file was left as it is; start afresh without `--resume` or with "
                        "another `--out` folder",
                    )
                ]
            ) from None


def rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    """The state of Python's, torch's (CPU and CUDA) and the data loader's generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` recorded."""
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(i) for i in x) if isinstance(x, list | tuple) else x
