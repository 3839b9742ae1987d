"""Where training is: stage lengths in optimizer steps, and the batches of each stage.

``kdspec train`` and a loop of one's own run a method's stages the same way: both take the
stage lengths from :func:`plan_stages` and the per-step :class:`~kdspec.ir.evaluate.Progress`
from :meth:`Progress.at <kdspec.ir.evaluate.Progress.at>`; :class:`StageLoop` yields a stage's
batches epoch by epoch (a fresh pass over the loader per epoch) exactly as the trainer draws
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kdspec.diagnostics import KdError, error
from kdspec.ir.evaluate import Progress

__all__ = ["StageLoop", "StageRun", "plan_stages"]


@dataclass(frozen=True)
class StageRun:
    """A stage as scheduled: its length per repetition, in epochs and in optimizer steps."""

    index: int
    name: str
    epochs: float
    steps: int
    repeat: int


def plan_stages(plans: Sequence[Any], total_epochs: float, steps_per_epoch: int) -> list[StageRun]:
    """Turn stage plans into step counts.

    ``total_epochs`` is the whole run. A stage lasts its own duration (epochs, steps, or a
    fraction of the run); the stages without one share what is left (per repetition: a stage
    repeated n times gets 1/n of its share each time). Durations become whole optimizer steps.

    Example:
        >>> from kdspec.compiler import StagePlan
        >>> [(s.name, s.steps) for s in plan_stages(
        ...     [StagePlan("hints", 0.25, "fraction"), StagePlan("distill", None, None)], 8, 10)]
        [('hints', 20), ('distill', 60)]
    """
    fixed: dict[int, float] = {}
    for i, p in enumerate(plans):
        if p.duration is None:
            continue
        if p.unit == "fraction":
            fixed[i] = float(p.duration) * total_epochs
        elif p.unit == "steps":
            fixed[i] = float(p.duration) / steps_per_epoch
        else:
            fixed[i] = float(p.duration)
    used = sum(fixed[i] * max(1, int(plans[i].repeat)) for i in fixed)
    open_reps = sum(max(1, int(p.repeat)) for i, p in enumerate(plans) if i not in fixed)
    if used > total_epochs + 1e-9 or (open_reps and used >= total_epochs - 1e-9):
        # A stage written for a longer run (FT's 30-epoch paraphraser stage on a 20-epoch run)
        # would eat the whole budget and leave the other stages a single step.
        names = ", ".join(f"`{plans[i].name}` ({fixed[i]:g} epochs)" for i in fixed)
        raise KdError(
            [
                error(
                    "KD207",
                    f"the stages with a fixed length ({names}) take {used:g} of the run's "
                    f"{total_epochs:g} epochs"
                    + (", leaving nothing for the others" if open_reps else ""),
                    help="train longer (`--epochs`, `[train] epochs`) or shorten the stage with "
                    "`--param` (library specs make the length a parameter, e.g. `init_epochs`; "
                    "`kdspec explain SPEC` shows it)",
                )
            ]
        )
    share = max(0.0, total_epochs - used) / open_reps if open_reps else 0.0
    out = []
    short: list[str] = []
    for i, p in enumerate(plans):
        epochs = fixed.get(i, share)
        if int(p.repeat) > 1 and epochs * steps_per_epoch < 1 and p.unit != "steps":
            short.append(p.name)
        steps = max(1, round(epochs * steps_per_epoch))
        if p.unit == "steps" and p.duration is not None:
            steps = max(1, int(p.duration))
        out.append(StageRun(i, p.name, steps / steps_per_epoch, steps, max(1, int(p.repeat))))
    _check_budget(out, short, total_epochs, steps_per_epoch)
    return out


MAX_TOTAL_STEPS = 100_000_000
"""More optimisation steps than any real run takes: a larger plan is a typo (`repeat 1e6`)."""


def _check_budget(
    stages: list[StageRun], short: list[str], total_epochs: float, steps_per_epoch: int
) -> None:
    """KD207 before training when repeats do not fit the run or the plan is absurdly long.

    Every repetition of a stage runs at least one step, so ``repeat 40`` on a run of 19 steps
    would silently train 40 steps (and evaluate 40 times): refused instead.
    """
    problems = [
        f"stage `{s.name}` repeats {s.repeat:,} times, but its share of the run is less than "
        "one step per repetition"
        for s in stages
        if s.name in short
    ]
    total = sum(s.steps * s.repeat for s in stages)
    if total > MAX_TOTAL_STEPS:
        problems.append(
            f"the plan has {total:,} optimisation steps, more than the {MAX_TOTAL_STEPS:,} allowed"
        )
    if problems:
        raise KdError(
            [
                error(
                    "KD207",
                    text,
                    help=f"the run has {total_epochs:g} epochs of {steps_per_epoch} steps; lower "
                    "the repeat count (`--param`) or train longer",
                )
                for text in problems
            ]
        )


@dataclass
class StageLoop:
    """One repetition of one stage of a run: iterate it for the stage's batches.

    Before each batch is handed out, ``on_step`` receives the step's :class:`Progress` (the
    Distiller records it, so schedules are evaluated where training is).
    """

    run: StageRun
    repeat: int
    loader: Iterable[Any]
    steps_per_epoch: int
    on_step: Callable[[Progress], None]

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def steps(self) -> int:
        return self.run.steps

    def __len__(self) -> int:
        return self.run.steps

    def __iter__(self) -> Iterator[Any]:
        done = 0
        while done < self.run.steps:
            batches = iter(self.loader)
            for _ in range(min(self.steps_per_epoch, self.run.steps - done)):
                try:
                    batch = next(batches)
                except StopIteration:
                    raise ValueError(
                        f"the loader ran out after {done % self.steps_per_epoch} batches, but "
                        f"an epoch was given {self.steps_per_epoch} steps"
                    ) from None
                self.on_step(Progress.at(done, self.steps_per_epoch, self.run.steps))
                yield batch
                done += 1
