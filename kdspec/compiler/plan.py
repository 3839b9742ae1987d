"""What a compiled method will do, as data: the plan ``kdspec plan`` prints and goldens pin.

A :class:`CompiledPlan` is frozen and deterministic (no tensors, no ids): every tap resolved
to the module paths and shapes it reads on the bound models, every adapter with its size, every
term with its loss and weight, and every stage with what it trains.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RolePlan:
    """A bound role: its model's size and how its stages were found."""

    name: str
    kind: str
    mode: str
    parameters: int
    stages: tuple[str, ...]
    stage_source: str
    classifier: str | None


@dataclass(frozen=True)
class TapPlan:
    """One tap of the spec and the hook points it reads (``path:io@call [shape]``)."""

    tap: str
    points: tuple[str, ...]


@dataclass(frozen=True)
class AdapterPlan:
    """A learned module a term builds (sized on the dry run)."""

    term: str
    func: str
    parameters: int


@dataclass(frozen=True)
class TermPlan:
    """A loss term: its loss and its weight (a number, or the schedule that sets it)."""

    name: str
    kind: str
    loss: str
    weight: str


@dataclass(frozen=True)
class StageView:
    """A stage: how long it runs, its terms, and what it trains."""

    name: str
    duration: str
    terms: tuple[str, ...]
    trained_roles: tuple[str, ...]
    trainable_parameters: int


@dataclass(frozen=True)
class CompiledPlan:
    """The compiled method, as ``kdspec plan`` prints it."""

    method: str
    roles: tuple[RolePlan, ...]
    taps: tuple[TapPlan, ...]
    adapters: tuple[AdapterPlan, ...]
    terms: tuple[TermPlan, ...]
    stages: tuple[StageView, ...]

    def explain(self) -> str:
        """The plan as text, one section per part (deterministic: goldens compare it)."""
        lines = [f"plan of `{self.method}`", "", "roles:"]
        for r in self.roles:
            stages = ", ".join(r.stages) or "none"
            lines.append(
                f"  {r.kind} {r.name} ({r.mode}): {r.parameters:,} parameters; "
                f"stages {stages} ({r.stage_source}); classifier {r.classifier or 'none'}"
            )
        lines += ["", "taps:"]
        for t in self.taps:
            lines.append(f"  {t.tap} -> {', '.join(t.points)}")
        lines += ["", "adapters:"]
        lines += [f"  {a.term}: {a.func} ({a.parameters:,} parameters)" for a in self.adapters]
        if not self.adapters:
            lines.append("  none")
        lines += ["", "terms:"]
        for term in self.terms:
            lines.append(f"  {term.name} ({term.kind}): {term.loss}, weight {term.weight}")
        lines += ["", "stages:"]
        for s in self.stages:
            lines.append(
                f"  {s.name} ({s.duration}): terms {', '.join(s.terms) or 'none'}; trains "
                f"{', '.join(s.trained_roles) or 'no role'} "
                f"({s.trainable_parameters:,} parameters with adapters)"
            )
        return "\n".join(lines) + "\n"
