"""Stages for frameworks that own the loop: which stage a step is in, and the optimizer's set.

A framework builds one optimizer for the whole run, so it gets every parameter that any stage
trains (:func:`all_trainable_parameters`); :meth:`Distiller.set_stage` then turns gradients on
for the current stage's set only, and optimizers skip parameters without a gradient. Stage
lengths follow :func:`kdspec.runtime.trainer.plan_stages`, as in ``kdspec train``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdspec.ir.evaluate import Progress
from kdspec.runtime.trainer import StageRun, plan_stages

__all__ = ["StageClock", "all_trainable_parameters"]


def all_trainable_parameters(distiller: Any) -> list[nn.Parameter]:
    """The union over stages of what each stage trains (students, adapters, learned losses).

    The distiller is left in its first stage.
    """
    out: dict[int, nn.Parameter] = {}
    for plan in distiller.stage_plans:
        distiller.set_stage(plan.name)
        out.update({id(p): p for p in distiller.trainable_parameters()})
    distiller.set_stage(distiller.stage_plans[0].name)
    return list(out.values())


class StageClock:
    """Maps a global optimizer step to its stage (and repetition) and switches the distiller.

    Args:
        distiller: a compiled Distiller.
        total_epochs: the run's length in epochs.
        steps_per_epoch: optimizer steps per epoch (``1`` gives whole-epoch stages).

    Example:
        >>> from kdspec.runtime.supervised import Plan
        >>> class D:  # anything with stage_plans, set_stage and finish_repeat
        ...     stage_plans = [Plan("hints", 2, "epochs"), Plan("distill")]
        ...     def set_stage(self, name): print("stage", name)
        ...     def finish_repeat(self, last=False): pass
        >>> clock = StageClock(D(), total_epochs=5, steps_per_epoch=1)
        >>> [clock.step(i).name for i in range(5)]
        stage hints
        stage distill
        ['hints', 'hints', 'distill', 'distill', 'distill']
    """

    def __init__(self, distiller: Any, total_epochs: float, steps_per_epoch: int):
        self.distiller = distiller
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.stages: list[StageRun] = plan_stages(
            distiller.stage_plans, total_epochs, self.steps_per_epoch
        )
        self.bounds: list[tuple[int, int, StageRun, int]] = []  # (start, end, stage, repeat)
        start = 0
        for stage in self.stages:
            for rep in range(stage.repeat):
                self.bounds.append((start, start + stage.steps, stage, rep))
                start += stage.steps
        self.total_steps = start
        self.current: tuple[int, int, StageRun, int] | None = None

    def step(self, global_step: int) -> StageRun:
        """Enter the stage of ``global_step`` (0-based), switching (and handing off) if needed."""
        found = next((b for b in self.bounds if b[0] <= global_step < b[1]), self.bounds[-1])
        if found is not self.current:
            if self.current is not None:
                stage, rep = self.current[2], self.current[3]
                self.distiller.finish_repeat(last=rep == stage.repeat - 1)
            self.distiller.set_stage(found[2].name)
            self.current = found
        return found[2]

    def progress(self, global_step: int) -> Progress:
        """Where training is within the current stage (for scheduled weights)."""
        start, _, stage, _ = self.current or self.bounds[0]
        return Progress(
            epoch=(global_step - start) / self.steps_per_epoch, stage_epochs=stage.epochs
        )
