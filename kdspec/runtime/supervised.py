"""Plain cross-entropy training of one model, in the shape the trainer drives.

:class:`Supervised` has the same surface as a compiled :class:`~kdspec.compiler.Distiller`
(stage plans, ``set_stage``, ``trainable_parameters``, ...), so teachers without weights and
the student-alone baselines are trained by the very loop that distils, with the same data
order, budget and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdspec.compiler.taps import call_model, is_causal, logits_of, next_token_pairs
from kdspec.ir.evaluate import Progress

__all__ = ["Plan", "StepOutput", "Supervised"]


@dataclass(frozen=True)
class Plan:
    """One stage of a :class:`Supervised` run (always one stage, all of training)."""

    name: str = "main"
    duration: float | None = None
    unit: str | None = None
    repeat: int = 1


@dataclass
class StepOutput:
    """The total loss and its named terms (here only ``ce``)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Supervised(nn.Module):
    """Train ``model`` (bound as role ``role``) on labels alone.

    Args:
        model: Any classifier returning logits (or an output with ``.logits``).
        role: The role name it is reported under.
    """

    def __init__(self, model: nn.Module, role: str = "s") -> None:
        super().__init__()
        self.roles = nn.ModuleDict({role: model})
        self.role = role
        self.stage_plans = [Plan()]

    def set_stage(self, name: str) -> None:
        """The only stage is ``main``; every parameter is trained."""
        for p in self.roles[self.role].parameters():
            p.requires_grad_(True)

    def forward(self, batch: Any, progress: Progress | None = None) -> StepOutput:
        """Cross-entropy of the model's logits on ``(x, y, index)`` (token logits ``[B, T, V]``:
        the mean over label tokens, ``-100`` ignored, next-token targets for a causal LM)."""
        x, y = batch[0], batch[1]
        model = self.roles[self.role]
        logits = logits_of(call_model(model, x))  # [B, K] or [B, T, V]
        if logits is None:
            raise TypeError(f"the model of `{self.role}` returned no logits")
        ce = F.cross_entropy(*next_token_pairs(logits, y, is_causal(model)))
        return StepOutput(ce, {"ce": ce})

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the model."""
        return list(self.roles[self.role].parameters())

    def after_step(self) -> None:
        """Nothing to update after a step."""

    def finish_repeat(self, last: bool = False) -> None:
        """Nothing to hand over."""

    def eval_roles(self) -> list[str]:
        """The single trained role."""
        return [self.role]
