"""A compiled method, frozen: :class:`CompiledPlan` is what a Distiller runs and what
``kdspec plan`` prints (goldens pin it).

:meth:`CompiledPlan.describe` gives a :class:`PlanSummary`, deterministic data (no tensors, no
ids): every tap resolved to the module paths and shapes it reads on the bound models, every
adapter with its size, every term with its loss and weight, and every stage with what it trains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdspec.compiler.build import StagePlan
from kdspec.compiler.hooks import HookPoint, resolve_tap
from kdspec.compiler.nodes import AdapterNode, LearnedNode, LetNode, TermModule
from kdspec.compiler.taps import ModelTaps
from kdspec.compiler.views import BatchRewrite
from kdspec.graph import KdGraph, types
from kdspec.ir import Lowered
from kdspec.ir import models as ir
from kdspec.ir.printer import expr_text


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
class PlanSummary:
    """A compiled method as ``kdspec plan`` prints it (:meth:`CompiledPlan.describe`)."""

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


@dataclass(frozen=True, eq=False)
class CompiledPlan:
    """A compiled method, frozen: what a :class:`~kdspec.compiler.Distiller` runs.

    Compiling binds the models (``roles``, ``model_taps``: what running the example batch
    showed of each), resolves every tap to its hook points (``points``), builds the term modules
    (``terms``, sharing ``lets``) and fixes what training does not change (``stage_plans``,
    ``const_weights``). :meth:`describe` is what ``kdspec plan`` prints. ``functional`` plans
    have no models: terms read the tensors a batch gives by tap text (``given``, the example's).
    """

    lowered: Lowered
    graph: KdGraph
    roles: nn.ModuleDict
    model_taps: Mapping[str, ModelTaps]
    points: Mapping[ir.Tap, list[HookPoint]]
    terms: nn.ModuleDict
    lets: Mapping[str, LetNode]
    views: Mapping[str, Callable[..., Any]]
    stage_plans: tuple[StagePlan, ...]
    const_weights: Mapping[str, float]
    num_classes: int | None
    num_samples: int | None = None
    functional: bool = False
    given: Mapping[str, Any] = field(default_factory=dict)
    train_data: Any = field(default=None, repr=False)
    causal: bool = False  # some role is a causal LM: its logits at t predict labels at t + 1
    token_data: bool = False  # the batches are tokens (taps carry a token axis)
    rewrite: tuple[BatchRewrite, str] | None = None  # a view generating the batch, its role
    # `predict s = ...`: role -> the module computing its deployed output (SimKD)
    predictions: nn.ModuleDict = field(default_factory=nn.ModuleDict)

    @property
    def method(self) -> ir.Method:
        """The checked method compiled."""
        return self.lowered.method

    def stage(self, name: str) -> ir.Stage:
        """The stage called ``name`` (``KeyError`` when there is none)."""
        stage = next((s for s in self.method.effective_stages() if s.name == name), None)
        if stage is None:
            raise KeyError(f"no stage `{name}`")
        return stage

    def active_terms(self, stage: ir.Stage | None) -> list[TermModule]:
        """The term modules a stage optimises (every term when no stage is given)."""
        names = {t.name for t in self.graph.active_terms(stage)} if stage else set(self.terms)
        return [m for n, m in self.terms.items() if n in names]  # type: ignore[misc]

    def trainable_parameters(self, stage: ir.Stage) -> list[nn.Parameter]:
        """What ``stage`` optimises: trained roles (or their listed parts), adapters, lets."""
        params = self._role_parameters(stage)
        named = {i.value for i in stage.train if isinstance(i, ir.Str)}
        named |= {i.name for i in stage.train if isinstance(i, ir.LetRef)}
        frozen_terms = {i.value for i in stage.freeze if isinstance(i, ir.Str)}
        extra: list[TermModule] = [t for n, t in self.terms.items() if n in named]  # type: ignore[misc]
        for term in self.active_terms(stage) + extra:
            if term.name in frozen_terms:
                continue
            for node in term.modules():
                if isinstance(node, AdapterNode | LearnedNode):
                    params.extend(node.parameters())
            params.extend(term.learned.parameters())
        for let in sorted(named & set(self.lets), key=list(self.lets).index):
            params.extend(self.lets[let].parameters())
        # `freeze <let>` keeps a shared learned part fixed (FT's paraphraser after its stage).
        frozen_lets = [i.name for i in stage.freeze if isinstance(i, ir.LetRef)]
        fixed = {id(p) for n in frozen_lets if n in self.lets for p in self.lets[n].parameters()}
        return list({id(p): p for p in params if id(p) not in fixed}.values())

    def _role_parameters(self, stage: ir.Stage) -> list[nn.Parameter]:
        subsets: dict[str, list[ir.Tap]] = {}
        frozen_parts: dict[str, list[ir.Tap]] = {}
        for items, parts in ((stage.train, subsets), (stage.freeze, frozen_parts)):
            for item in items:
                if isinstance(item, ir.Tap) and item.point != "output":
                    parts.setdefault(item.role, []).append(item)
        frozen = {t.role for t in stage.freeze if isinstance(t, ir.Tap) and t.point == "output"}
        params: list[nn.Parameter] = []
        for role in sorted(self.graph.trained_roles(stage)):
            if role not in self.roles or role in frozen:
                continue
            if role in subsets:
                chosen = self.subset_parameters(role, subsets[role])
            else:
                chosen = list(self.roles[role].parameters())
            if role in frozen_parts:  # `freeze s.stage[..1]`: everything up to stage 1 stays
                held = {id(p) for p in self.subset_parameters(role, frozen_parts[role])}
                chosen = [p for p in chosen if id(p) not in held]
            params.extend(chosen)
        return params

    def subset_parameters(self, role: str, taps: list[ir.Tap]) -> list[nn.Parameter]:
        """The parameters of ``role``'s modules that run up to (and at) the last of ``taps``."""
        model = self.roles[role]
        info = self.model_taps[role]
        limit = -1
        for tap in taps:
            for point in resolve_tap(tap, info, model):
                call = info.first_call(point.path)
                if call is not None:
                    limit = max(limit, call.order)
        order = {c.path: c.order for c in info.calls if c.call == 0}
        out: list[nn.Parameter] = []
        for path, module in model.named_modules():
            if order.get(path, 10**9) <= limit:
                out.extend(module.parameters(recurse=False))
        return out

    def describe(self) -> PlanSummary:
        """The plan as deterministic data (no tensors, no ids): what ``kdspec plan`` prints."""
        return PlanSummary(
            self.method.name,
            tuple(self._role_plan(r) for r in self.method.roles if r.name in self.roles),
            tuple(
                TapPlan(types.tap_text(tap), tuple(self._point_text(tap.role, p) for p in points))
                for tap, points in self.points.items()
            ),
            tuple(
                AdapterPlan(name, node.func, sum(p.numel() for p in node.parameters()))
                for name, term in self.terms.items()
                for node in term.modules()
                if isinstance(node, AdapterNode)
            ),
            tuple(self._term_plan(t) for t in self.method.terms),
            tuple(
                self._stage_view(s, p)
                for s, p in zip(self.method.effective_stages(), self.stage_plans, strict=True)
            ),
        )

    def explain(self) -> str:
        """:meth:`describe` as text (see :meth:`PlanSummary.explain`)."""
        return self.describe().explain()

    def _role_plan(self, r: ir.Role) -> RolePlan:
        info = self.model_taps.get(r.name)
        return RolePlan(
            r.name,
            r.kind,
            r.mode,
            sum(p.numel() for p in self.roles[r.name].parameters()),
            tuple(info.stages) if info is not None else (),
            info.stage_source if info is not None else "-",
            info.classifier if info is not None else None,
        )

    def _term_plan(self, t: ir.Term) -> TermPlan:
        const = self.const_weights.get(t.name)
        weight = f"{const:g}" if const is not None else expr_text(t.weight)
        return TermPlan(t.name, t.kind, expr_text(t.loss), weight)

    def _point_text(self, role: str, point: HookPoint) -> str:
        info = self.model_taps.get(role)
        if point.kind != "module" or info is None:
            shape = info.logits_shape if info and point.kind == "logits" else None
            return f"{point.kind}" + (f" {list(shape)}" if shape else "")
        call = next((c for c in info.calls if c.path == point.path and c.call == point.call), None)
        shape = (call.in_shape if point.io == "input" else call.out_shape) if call else None
        at = f"@{point.call}" if point.call else ""
        return f"{point.path}:{point.io}{at}" + (f" {list(shape)}" if shape else "")

    def _stage_view(self, stage: ir.Stage, sp: StagePlan) -> StageView:
        count = sum(p.numel() for p in self.trainable_parameters(stage))
        length = "rest" if sp.duration is None else f"{sp.duration:g} {sp.unit}"
        return StageView(
            stage.name,
            length + (f" x{sp.repeat}" if sp.repeat > 1 else ""),
            tuple(t.name for t in self.graph.active_terms(stage)),
            tuple(sorted(self.graph.trained_roles(stage))),
            count,
        )
