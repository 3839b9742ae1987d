"""Bind a checked method to real ``nn.Module``s: the :class:`Distiller`.

``compile_spec`` resolves every tap on every model (one dry run each), builds the term modules,
then runs every term once on the example batch so that adapters are sized and any shape that no
adapter can fix is reported against the spec line before training starts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdspec.compiler.hooks import HookPoint, TapError, TapSession, resolve_tap
from kdspec.compiler.nodes import (
    AdapterNode,
    ApplyNode,
    ApplyShapeError,
    ArgNode,
    CombineNode,
    ConstNode,
    Env,
    HoleNode,
    LearnedNode,
    LetNode,
    Node,
    PipelineNode,
    PrimNode,
    ShapeMismatch,
    TapNode,
    TermModule,
    TransformNode,
    VirtualNode,
)
from kdspec.compiler.plan import (
    AdapterPlan,
    CompiledPlan,
    RolePlan,
    StageView,
    TapPlan,
    TermPlan,
)
from kdspec.compiler.stages import StageLoop, StageRun, plan_stages
from kdspec.compiler.taps import ModelTaps, discover, is_causal
from kdspec.compiler.teacher_cache import DETERMINISTIC_VIEWS, TeacherCache
from kdspec.compiler.views import BatchRewrite, make_subset, make_view
from kdspec.diagnostics import Diagnostic, KdError
from kdspec.graph import KdGraph, build_graph, types
from kdspec.ir import Lowered, SourceMap
from kdspec.ir import models as ir
from kdspec.ir.evaluate import EvalError, Progress, compile_value, evaluate, uses_progress
from kdspec.ir.functions import HOLE, STUDENT_SIDE, TEACHER_SIDE, expand
from kdspec.ir.printer import expr_text, module_text
from kdspec.ir.traverse import find_all
from kdspec.ops import LOSSES, TRANSFORMS
from kdspec.ops.adapters import AdapterShapeError
from kdspec.ops.components import LEARNED_LOSSES
from kdspec.ops.transforms import UNSCALED
from kdspec.vocabulary import FUNCTIONS


@dataclass(frozen=True)
class StagePlan:
    """A stage as the trainer runs it."""

    name: str
    duration: float | None
    unit: str | None  # "epochs" | "steps" | "fraction" | None (the rest of training)
    repeat: int = 1
    handoffs: tuple[tuple[str, str], ...] = ()


@dataclass
class DistillOutput:
    """The total loss and each term's weighted value (named after its spec line).

    ``terms`` are detached, for logging (``float(v)``); ``grad_terms`` are the same values with
    their graph, for a loop that needs one term's gradient.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Batch:
    x: Any
    labels: torch.Tensor | None
    index: torch.Tensor | None
    taps: dict[str, Any] | None = None


def _unpack(batch: Any) -> _Batch:
    if isinstance(batch, dict):
        if "x" in batch:
            return _Batch(batch["x"], batch.get("y", batch.get("labels")), batch.get("index"))
        taps = {k: v for k, v in batch.items() if k not in ("labels", "index")}
        return _Batch(None, batch.get("labels"), batch.get("index"), taps)
    if isinstance(batch, list | tuple):
        x = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        index = batch[2] if len(batch) > 2 else None
        return _Batch(x, labels, index)
    return _Batch(batch, None, None)


def _mapping_pairs(rule: str | None, n_t: int, n_s: int) -> list[tuple[int, int]] | None:
    """Pairs (teacher layer, student layer) for a mapping rule; None if lengths are unpaired."""
    if rule in (None, "one_to_one"):
        if n_t == n_s or n_t == 1 or n_s == 1:
            return [(i if n_t > 1 else 0, i if n_s > 1 else 0) for i in range(max(n_t, n_s))]
        return None
    if rule == "uniform":  # student layer i learns from teacher layer round((i+1)·n_t/n_s)-1
        return [(max(0, round((i + 1) * n_t / n_s) - 1), i) for i in range(n_s)]
    if rule == "last":
        k = min(n_t, n_s)
        return [(n_t - k + i, n_s - k + i) for i in range(k)]
    if rule == "first":
        k = min(n_t, n_s)
        return [(i, i) for i in range(k)]
    if rule == "all_pairs":
        return [(i, j) for j in range(n_s) for i in range(n_t)]
    return None


class Distiller(nn.Module):
    """A compiled method: ``forward(batch)`` returns the total loss and every named term.

    It drops into any training loop: call :meth:`set_stage` when a stage starts, optimise
    :meth:`trainable_parameters`, call :meth:`after_step` after each optimizer step (EMA
    roles) and :meth:`finish_repeat` after each repetition of a stage (generations).
    """

    def __init__(
        self,
        lowered: Lowered,
        models: dict[str, nn.Module] | None,
        num_classes: int | None,
        train_data: Any = None,
    ):
        super().__init__()
        self.lowered = lowered
        self.method: ir.Method = lowered.method
        self.graph: KdGraph = build_graph(self.method)
        self.params_ir = self.method.params
        self.num_classes = num_classes
        self.num_samples: int | None = None
        self.train_data = train_data
        self.roles = nn.ModuleDict()
        self.terms = nn.ModuleDict()
        self.predictions = nn.ModuleDict()  # `predict s = ...`: role -> its deployed output
        self.functional = models is None
        self.causal = False  # some role is a causal LM: its logits at t predict labels at t + 1
        self._taps: dict[str, ModelTaps] = {}
        self._points: dict[ir.Tap, list[HookPoint]] = {}
        self._weights: dict[str, ir.Expr] = {t.name: t.weight for t in self.method.terms}
        self._const_weights: dict[str, float] = {}
        self._views: dict[str, Any] = {}
        self._rewrite: tuple[BatchRewrite, str] | None = None  # generated data, its generator
        self._lets: dict[str, LetNode] = {}
        self._stage: ir.Stage | None = None
        self._trained: set[str] = set()
        self._parked: set[str] = set()  # frozen roles `train()` put in eval mode
        self._teacher_cache: TeacherCache | None = None
        self._forward_cache: dict[tuple[str, str | None], TapSession] = {}
        self._view_cache: dict[str | None, Any] = {}
        self._batch: _Batch | None = None
        self._given: dict[str, Any] = {}
        self.stage_plans: list[StagePlan] = []
        # Where training is: set per batch by `stages()`; the last progress a forward used.
        self._position: Progress | None = None
        self._last_progress: Progress | None = None
        self._scheduled: list[tuple[str, tuple[str, str]]] = _scheduled_parts(self.method)

    # -- running roles ----------------------------------------------------------------------

    def _role_view(self, tap: ir.Tap) -> str | None:
        if tap.view is not None:
            return tap.view
        role = self.method.role(tap.role)
        return role.view if role is not None else None

    def _input_for(self, view: str | None) -> Any:
        assert self._batch is not None
        if view not in self._view_cache:
            fn = self._views.get(view) if view is not None else None
            x = self._batch.x
            self._view_cache[view] = fn(x, self._batch.labels) if fn is not None else x
        return self._view_cache[view]

    def _run_role(self, role: str, view: str | None) -> TapSession:
        key = (role, view)
        session = self._forward_cache.get(key)
        if session is not None:
            return session
        model = self.roles[role]
        points = self._needed.get(key) or []
        session = TapSession(model, list(points))
        trained = role in self._trained
        x = self._input_for(view)
        was_training = model.training
        with session:
            if trained:
                session.run(x)
            elif not self._from_cache(role, view, session):
                # frozen roles run in eval mode, without building a graph, up to their taps
                if was_training:  # `train()` and `set_stage()` keep frozen roles in eval mode
                    model.eval()
                try:
                    with torch.no_grad():
                        session.run(x, stop_early=True)
                finally:
                    if was_training:
                        model.train()
                if self._cached(role):
                    self._teacher_cache.store(role, view, session.values, self._index())  # type: ignore[union-attr]
        self._forward_cache[key] = session
        return session

    def cache_frozen_outputs(self, enabled: bool = True) -> None:
        """Compute what frozen roles' taps produce once per training sample and reuse it.

        Needs batches ``(x, y, index)`` with each sample's index into the training set, and
        inputs that are the same every epoch: random views are refused here, and random
        augmentation in the loader must be off (the caller's to ensure). ``ema`` and
        ``snapshot`` roles change during training and are never cached; only batches seen in
        training mode are read from or written to the cache; loading new teacher weights
        needs ``cache_frozen_outputs()`` again (a fresh cache).

        Raises:
            ValueError: the number of training samples is unknown, or a frozen role reads a
                random view.
        """
        if not enabled:
            self._teacher_cache = None
            return
        if self.num_samples is None:
            raise ValueError("caching teacher outputs needs the training set size (num_samples)")
        for role in self.method.roles:
            if role.mode != "frozen":
                continue
            for tap in self._points:
                view = self._role_view(tap) if tap.role == role.name else None
                part = next((p for p in self.method.data if p.name == view), None)
                if part is not None and part.func not in DETERMINISTIC_VIEWS:
                    raise ValueError(
                        f"cannot cache `{role.name}`'s outputs: it reads view `{view}` "
                        f"(`{part.func}`), which is random, so its outputs change every epoch"
                    )
        self._teacher_cache = TeacherCache(self.num_samples)

    def _cached(self, role: str) -> bool:
        r = self.method.role(role)
        # training batches only: their indices are the training-set positions the cache is keyed by
        return (
            self.training
            and self._teacher_cache is not None
            and r is not None
            and r.mode == "frozen"
        )

    def _index(self) -> torch.Tensor:
        assert self._batch is not None
        if self._batch.index is None:
            raise ValueError("the teacher cache needs batches (x, y, index) with sample indices")
        return self._batch.index

    def _from_cache(self, role: str, view: str | None, session: TapSession) -> bool:
        """Fill ``session`` with a cached batch; False when not cached (or not all of it)."""
        if not self._cached(role):
            return False
        found = self._teacher_cache.lookup(role, view, session.points, self._index())  # type: ignore[union-attr]
        if found is not None:
            session.values = dict(found)
        return found is not None

    def _read(self, tap: ir.Tap, indices: list[int] | None) -> list[torch.Tensor]:
        if self.functional:
            value = self._given.get(types.tap_text(tap))
            if value is None:
                raise TapError("KD402", f"no tensor given for `{types.tap_text(tap)}`")
            values = list(value) if isinstance(value, list | tuple) else [value]
        else:
            session = self._run_role(tap.role, self._role_view(tap))
            values = [session.get(p) for p in self._points[tap]]
        if indices is not None:
            values = [values[i] for i in indices]
        return values

    # -- stages and parameters --------------------------------------------------------------

    def _active(self, stage: ir.Stage | None) -> list[TermModule]:
        names = {t.name for t in self.graph.active_terms(stage)} if stage else set(self.terms)
        return [m for n, m in self.terms.items() if n in names]  # type: ignore[misc]

    def _collect_points(
        self, terms: list[TermModule]
    ) -> dict[tuple[str, str | None], list[HookPoint]]:
        needed: dict[tuple[str, str | None], list[HookPoint]] = {}
        for term in terms:
            for node in term.modules():
                if isinstance(node, TapNode) and node.tap in self._points:
                    key = (node.tap.role, self._role_view(node.tap))
                    needed.setdefault(key, []).extend(self._points[node.tap])
        return {k: list(dict.fromkeys(v)) for k, v in needed.items()}

    def set_stage(self, name: str) -> None:
        """Switch to a stage: its terms become active and its trainable set gets gradients."""
        stage = next((s for s in self.method.effective_stages() if s.name == name), None)
        if stage is None:
            raise KeyError(f"no stage `{name}`")
        self._stage = stage
        self._trained = self.graph.trained_roles(stage)
        self._needed = self._collect_points(self._active(stage))
        for role in self.method.roles:
            source = role.source or ""
            if role.mode == "snapshot" and source in self.roles and role.name in self.roles:
                self.roles[role.name].load_state_dict(self.roles[source].state_dict())
        trainable = {id(p) for p in self.trainable_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        if self._teacher_cache is not None and any(
            r.mode == "frozen" and r.name in self._trained for r in self.method.roles
        ):  # a stage that trains a `frozen` role makes its cached outputs stale
            self._teacher_cache.clear()
        for name in self._parked & self._trained:  # frozen by `train()` in an earlier stage
            self.roles[name].train(self.training)
        self._parked -= self._trained

    def train(self, mode: bool = True) -> Distiller:
        """Set training mode; the current stage's frozen roles go to (and stay in) eval mode,
        so that a step need not switch them."""
        super().train(mode)
        if self._stage is not None:
            self._parked = {n for n in self.roles if n not in self._trained}
            for name in self._parked:
                self.roles[name].eval()
        return self

    def _subset_params(self, role: str, taps: list[ir.Tap]) -> list[nn.Parameter]:
        model = self.roles[role]
        info = self._taps[role]
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

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the current stage optimises: trained roles (or their listed parts), adapters."""
        stage = self._stage or self.method.effective_stages()[0]
        params: list[nn.Parameter] = []
        subsets: dict[str, list[ir.Tap]] = {}
        for item in stage.train:
            if isinstance(item, ir.Tap) and item.point != "output":
                subsets.setdefault(item.role, []).append(item)
        frozen = {t.role for t in stage.freeze if isinstance(t, ir.Tap) and t.point == "output"}
        frozen_parts: dict[str, list[ir.Tap]] = {}
        for item in stage.freeze:
            if isinstance(item, ir.Tap) and item.point != "output":
                frozen_parts.setdefault(item.role, []).append(item)
        for role in sorted(self.graph.trained_roles(stage)):
            if role not in self.roles or role in frozen:
                continue
            if role in subsets:
                chosen = self._subset_params(role, subsets[role])
            else:
                chosen = list(self.roles[role].parameters())
            if role in frozen_parts:  # `freeze s.stage[..1]`: everything up to stage 1 stays
                held = {id(p) for p in self._subset_params(role, frozen_parts[role])}
                chosen = [p for p in chosen if id(p) not in held]
            params.extend(chosen)
        named = {i.value for i in stage.train if isinstance(i, ir.Str)}
        named |= {i.name for i in stage.train if isinstance(i, ir.LetRef)}
        frozen_terms = {i.value for i in stage.freeze if isinstance(i, ir.Str)}
        for term in self._active(stage) + [t for n, t in self.terms.items() if n in named]:
            if term.name in frozen_terms:
                continue
            for node in term.modules():
                if isinstance(node, AdapterNode | LearnedNode):
                    params.extend(node.parameters())
            params.extend(term.learned.parameters())  # type: ignore[union-attr]
        for let in named & set(self._lets):
            params.extend(self._lets[let].parameters())
        # `freeze <let>` keeps a shared learned part fixed (FT's paraphraser after its stage).
        frozen_lets = [i.name for i in stage.freeze if isinstance(i, ir.LetRef)]
        fixed = {id(p) for n in frozen_lets if n in self._lets for p in self._lets[n].parameters()}
        return list({id(p): p for p in params if id(p) not in fixed}.values())

    def eval_roles(self) -> list[str]:
        """The roles whose accuracy a run reports: students, peers and assistants first."""
        trained = [
            r.name
            for r in self.method.roles
            if r.name in self.roles
            and r.kind in ("student", "peer", "assistant")
            and r.mode == "trained"
        ]
        return trained or [r.name for r in self.method.roles if r.name in self.roles]

    def deployed(self, role: str) -> nn.Module:
        """The role as it is deployed and evaluated: its model, or, where the spec says
        ``predict ROLE = ...``, a module computing that prediction from the input (SimKD: the
        student, its projector and the teacher's classifier)."""
        if role in self.predictions:
            return Deployed(self, role)
        return self.roles[role]

    def predict(self, role: str, x: Any) -> torch.Tensor:
        """The ``predict`` of ``role`` on a batch of inputs (no labels needed)."""
        node = self.predictions[role]
        saved = getattr(self, "_needed", {})
        self._needed = self._collect_points([node])  # type: ignore[list-item]
        env = self._begin((x, None))
        try:
            return node(env)[0]
        finally:
            self._needed = saved
            self._forward_cache, self._view_cache, self._batch = {}, {}, None

    @torch.no_grad()
    def after_step(self) -> None:
        """Move moving-average roles towards their source (call after each optimizer step)."""
        for role in self.method.roles:
            if role.mode != "ema" or role.source is None or role.name not in self.roles:
                continue
            decay = (
                float(evaluate(role.options["decay"], self.params_ir, self._last_progress))  # type: ignore[arg-type]
                if "decay" in role.options
                else 0.999
            )
            ema, src = self.roles[role.name], self.roles[role.source]
            for pe, ps in zip(ema.parameters(), src.parameters(), strict=True):
                pe.mul_(decay).add_(ps.detach(), alpha=1 - decay)
            for be, bs in zip(ema.buffers(), src.buffers(), strict=True):
                be.copy_(bs)

    @torch.no_grad()
    def finish_repeat(self, last: bool = False) -> None:
        """End of one repetition of the current stage: hand trained weights over (BAN).

        After the ``last`` repetition nothing is handed over: the final generation stays the
        trained student, which is what a run reports.
        """
        if self._stage is None or last:
            return
        for src, dst in self._stage.handoffs:
            self.roles[dst].load_state_dict(self.roles[src].state_dict())
            for module in self.roles[src].modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()

    # -- forward ----------------------------------------------------------------------------

    def weight(self, name: str, progress: Progress | None) -> float:
        """A term's weight at a point of training (schedules evaluated)."""
        if name in self._const_weights:
            return self._const_weights[name]
        return float(evaluate(self._weights[name], self.params_ir, progress))  # type: ignore[arg-type]

    # -- where training is -------------------------------------------------------------------

    def plan(self, epochs: float, steps_per_epoch: int) -> list[StageRun]:
        """Every stage's length in optimizer steps for a run of ``epochs`` (as ``kdspec train``).

        Raises:
            KdError: KD207 when the stages with a fixed length do not fit in ``epochs``.
        """
        return plan_stages(self.stage_plans, epochs, steps_per_epoch)

    def stages(
        self, loader: Iterable[Any], epochs: float, *, steps_per_epoch: int | None = None
    ) -> Iterator[StageLoop]:
        """Run the method's stages as ``kdspec train`` does, in a loop of one's own.

        Yields one :class:`~kdspec.compiler.stages.StageLoop` per stage (and repetition), with
        the stage set; iterating it gives that stage's batches (``for 30%`` of ``epochs`` is 30%
        of the steps), and each forward evaluates schedules at that batch's step. Hand-offs
        between repetitions happen when the next one is asked for. Make a fresh optimizer per
        stage over :meth:`trainable_parameters`, which change between stages.

        Args:
            loader: the training batches, one epoch per pass (a ``DataLoader``).
            epochs: the length of the whole run.
            steps_per_epoch: batches per epoch (default ``len(loader)``).
        """
        per_epoch = steps_per_epoch if steps_per_epoch is not None else len(loader)  # type: ignore[arg-type]
        runs = self.plan(epochs, per_epoch)
        for run in runs:
            for rep in range(run.repeat):
                self.set_stage(run.name)
                self.train()
                self._position = Progress.at(0, per_epoch, run.steps)
                yield StageLoop(run, rep, loader, per_epoch, self._set_position)
                self.finish_repeat(last=rep == run.repeat - 1)

    def _set_position(self, progress: Progress) -> None:
        self._position = progress

    def _where(self, progress: Progress | None) -> Progress | None:
        """The progress a forward uses; KD504 where it matters and nobody said."""
        progress = progress if progress is not None else self._position
        stages = self.method.effective_stages()
        timed = len(stages) > 1 or stages[0].duration is not None
        if progress is None and (self._scheduled or (self._stage is None and timed)):
            what = (
                "changes values during training (schedules in "
                + ", ".join(text for text, _ in self._scheduled)
                + ")"
                if self._scheduled
                else "has stages (" + ", ".join(f"`{s.name}`" for s in stages) + ")"
            )
            smap = self.lowered.source_map
            where = self._scheduled[0][1] if self._scheduled else ("stage", stages[-1].name)
            raise KdError(
                [
                    smap.diagnostic(
                        "KD504",
                        f"`{self.method.name}` {what}, but the Distiller does not know where "
                        "training is",
                        where,
                        "depends on where training is",
                        help="iterate `distiller.stages(loader, epochs=...)` and its batches, "
                        "as `kdspec train` does, or pass "
                        "`progress=Progress.at(step, steps_per_epoch, stage_steps)`",
                    )
                ]
            )
        return progress

    def forward(self, batch: Any, progress: Progress | None = None) -> DistillOutput:
        """Total loss and weighted terms for one batch (``(x, y[, index])`` or a dict).

        Schedules are evaluated at ``progress``, or where :meth:`stages` says training is.

        Raises:
            KdError: KD504 when the method has schedules, or several (or timed) stages and no
                stage was set, and neither ``progress`` nor :meth:`stages` says where training is.
        """
        progress = self._where(progress)
        if self._stage is None:
            self.set_stage(self.method.effective_stages()[0].name)
        self._last_progress = progress
        env = self._begin(batch, progress)
        terms: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        try:
            for term in self._active(self._stage):
                w = self.weight(term.name, progress)
                value = term(env) * w
                terms[term.name] = value
                total = value if total is None else total + value
        finally:
            self._forward_cache = {}
            self._view_cache = {}
            self._batch = None
        if total is None:
            total = torch.zeros(())
        return DistillOutput(total, {k: v.detach() for k, v in terms.items()}, terms)

    def _begin(self, batch: Any, progress: Progress | None = None) -> Env:
        """Start evaluating a batch: fresh per-forward caches and the environment terms read."""
        self._batch = _unpack(batch)
        if self._rewrite is not None and self._batch.x is not None:
            view, role = self._rewrite  # every role sees generated data (checked at compile)
            b = self._batch
            assert b.labels is not None
            x, labels = view(b.x, b.labels, b.index, self.roles[role])
            self._batch = _Batch(x, labels, b.index)
        if self._batch.taps is not None:
            self._given = self._batch.taps
        self._forward_cache, self._view_cache = {}, {}
        return Env(
            read=self._read,
            batch_size=_batch_size(self._batch),
            labels=_position_labels(self._batch, self.causal),
            index=self._batch.index,
            num_classes=self.num_classes,
            num_samples=self.num_samples,
            progress=progress,
        )

    def raw_terms(self, batch: Any) -> dict[str, torch.Tensor]:
        """Every term of every stage, unweighted (for conformance tests)."""
        saved = self._needed if hasattr(self, "_needed") else {}
        self._needed = self._collect_points(list(self.terms.values()))  # type: ignore[arg-type]
        env = self._begin(batch)
        try:
            return {name: term(env) for name, term in self.terms.items()}
        finally:
            self._needed = saved
            self._batch = None

    def evaluate_terms(
        self, tensors: dict[str, Any], labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Unweighted terms on given tapped tensors, keyed by tap text (``"t.stage[1..3]"``)."""
        return self.raw_terms({**tensors, "labels": labels})

    def compiled_plan(self) -> CompiledPlan:
        """What this compiled method does, as frozen data (see :mod:`kdspec.compiler.plan`)."""
        roles = tuple(
            RolePlan(
                r.name,
                r.kind,
                r.mode,
                sum(p.numel() for p in self.roles[r.name].parameters()),
                tuple(self._taps[r.name].stages) if r.name in self._taps else (),
                self._taps[r.name].stage_source if r.name in self._taps else "-",
                self._taps[r.name].classifier if r.name in self._taps else None,
            )
            for r in self.method.roles
            if r.name in self.roles
        )
        taps = tuple(
            TapPlan(types.tap_text(tap), tuple(self._point_text(tap.role, p) for p in points))
            for tap, points in self._points.items()
        )
        adapters = tuple(
            AdapterPlan(name, node.func, sum(p.numel() for p in node.parameters()))
            for name, term in self.terms.items()
            for node in term.modules()
            if isinstance(node, AdapterNode)
        )
        terms = tuple(
            TermPlan(
                t.name,
                t.kind,
                expr_text(t.loss),
                f"{self._const_weights[t.name]:g}"
                if t.name in self._const_weights
                else expr_text(t.weight),
            )
            for t in self.method.terms
        )
        return CompiledPlan(self.method.name, roles, taps, adapters, terms, self._stage_views())

    def _point_text(self, role: str, point: HookPoint) -> str:
        info = self._taps.get(role)
        if point.kind != "module" or info is None:
            shape = info.logits_shape if info and point.kind == "logits" else None
            return f"{point.kind}" + (f" {list(shape)}" if shape else "")
        call = next((c for c in info.calls if c.path == point.path and c.call == point.call), None)
        shape = (call.in_shape if point.io == "input" else call.out_shape) if call else None
        at = f"@{point.call}" if point.call else ""
        return f"{point.path}:{point.io}{at}" + (f" {list(shape)}" if shape else "")

    def _stage_views(self) -> tuple[StageView, ...]:
        saved, views = self._stage, []
        for stage, sp in zip(self.method.effective_stages(), self.stage_plans, strict=True):
            self._stage = stage
            count = sum(p.numel() for p in self.trainable_parameters())
            length = "rest" if sp.duration is None else f"{sp.duration:g} {sp.unit}"
            views.append(
                StageView(
                    stage.name,
                    length + (f" x{sp.repeat}" if sp.repeat > 1 else ""),
                    tuple(t.name for t in self.graph.active_terms(stage)),
                    tuple(sorted(self.graph.trained_roles(stage))),
                    count,
                )
            )
        self._stage = saved
        return tuple(views)


class Deployed(nn.Module):
    """A role with a ``predict``: ``forward(x)`` gives the spec's prediction (evaluation)."""

    def __init__(self, distiller: Distiller, role: str):
        super().__init__()
        self.distiller = distiller
        self.role = role

    def forward(self, x: Any) -> torch.Tensor:
        return self.distiller.predict(self.role, x)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, d: Distiller, smap: SourceMap | None):
        self.d = d
        self.m = d.method
        self.smap = smap
        self.diags: list[Diagnostic] = []
        self.holes: dict[str, types.VType] = {}  # types of the stand-ins being built

    def diag(
        self,
        code: str,
        message: str,
        path: tuple[object, ...],
        label: str = "",
        help: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        smap = self.smap or SourceMap(None)  # type: ignore[arg-type]
        self.diags.append(smap.diagnostic(code, message, path, label, help=help, notes=notes))

    def value(self, e: ir.Expr | None) -> Any:
        """A number as the runtime uses it: constant, or :class:`Scheduled` (every step)."""
        if e is None:
            return None
        try:
            return _whole(compile_value(e, self.m.params))
        except EvalError:
            return None

    def kwargs(self, call: ir.Call) -> dict[str, Any]:
        return {k: self.value(v) for k, v in call.kwargs.items()}

    def resolve(self, tap: ir.Tap, path: tuple[object, ...]) -> None:
        if self.d.functional or tap in self.d._points:
            return
        role = self.m.role(tap.role)
        if role is not None and role.mode == "virtual":
            return
        if tap.role not in self.d._taps:
            return
        try:
            self.d._points[tap] = resolve_tap(tap, self.d._taps[tap.role], self.d.roles[tap.role])
        except TapError as exc:
            self.diag(
                exc.code,
                f"`{types.tap_text(tap)}`: {exc.message}",
                path,
                f"on the model of `{tap.role}`",
                help=exc.help,
            )
            self.d._points[tap] = []

    def length(self, tap: ir.Tap) -> int:
        if self.d.functional:
            v = self.d._given.get(types.tap_text(tap))
            return len(v) if isinstance(v, list | tuple) else 1
        return len(self.d._points.get(tap, [])) or 1

    def node(self, e: ir.Expr, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]) -> Node:
        if isinstance(e, ir.Tap):
            role = self.m.role(e.role)
            if role is not None and role.mode == "virtual":
                correct = role.options.get("correct")
                return VirtualNode(self.value(correct) if correct is not None else 0.9)
            ens = self.m.ensemble(e.role)
            if ens is not None:
                members = [
                    self.node(e.model_copy(update={"role": r}), path, indices) for r in ens.members
                ]
                return CombineNode(members, self.value(ens.weights), distribution=False)
            self.resolve(e, path)
            return TapNode(e, indices.get(e))
        if isinstance(e, ir.LetRef):
            if e.name not in self.d._lets:
                let = self.m.let(e.name)
                assert let is not None  # the passes report unknown names
                self.d._lets[e.name] = LetNode(self.node(let.value, path, indices))
            return self.d._lets[e.name]
        if isinstance(e, ir.ArgRef):
            return HoleNode() if e.name == HOLE else ArgNode(e.name)
        if isinstance(e, ir.Apply):
            return self.apply(e, path, indices)
        if types.is_static(e, self.m):
            return ConstNode(self.value(e))
        if isinstance(e, ir.BinOp | ir.Neg):
            operands = [e.left, e.right] if isinstance(e, ir.BinOp) else [e.operand]
            return self.primitive(
                "neg" if isinstance(e, ir.Neg) else e.op, operands, {}, path, indices
            )
        if isinstance(e, ir.Call) and self.m.function(e.func) is not None:
            fdef = self.m.function(e.func)
            assert fdef is not None
            return self.node(expand(e, fdef), path, indices)
        if isinstance(e, ir.Call) and e.func == "choose" and len(e.args) == 3:
            chosen = types.choose_branch(e, self.m)
            if chosen is None:
                raise ValueError("the condition of `choose` is not known before training")
            return self.node(chosen, path, indices)
        if isinstance(e, ir.Call) and _is_primitive_call(e):
            fn = FUNCTIONS[e.func]
            args = list(e.args)
            if e.func == "normalize" and args:
                args[0] = self.scale_free(args[0])
            return self.primitive(e.func, args, self.kwargs(e), path, indices, fn)
        if isinstance(e, ir.Call):
            fn = FUNCTIONS[e.func]
            kwargs = self.kwargs(e)
            if fn.category == "adapter":
                child = self.node(e.args[0], path, indices)
                if e.func == "identity":
                    return child
                more = [self.node(a, path, indices) for a in e.args[1:]]
                return AdapterNode(e.func, child, kwargs, term=str(path[1]), extra=more)
            args = list(e.args)
            if e.func == "normalize" and args:
                args[0] = self.scale_free(args[0])
            inputs = [self.node(a, path, indices) for a in args]
            if fn.category == "combine":
                weights = kwargs.get("weights")
                kinds = {types.expr_kind(a, self.m) for a in e.args}
                return CombineNode(inputs, weights, distribution=kinds == {"distribution"})
            extra: dict[str, Any] | None = None
            if e.func == "margin_relu":
                extra = {"margins": self.margins(e.args[0], path)}
            if e.func == "normalize":
                _normalize_unscaled(inputs[0])
            return TransformNode(e.func, inputs, kwargs, extra)
        raise ValueError(f"`{type(e).__name__}` cannot be evaluated on tensors")

    def apply(
        self, e: ir.Apply, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        """``t.classifier(x)``: the module of the role's model, and the input shape it takes."""
        inputs = [self.node(a, path, indices) for a in e.args]
        text = module_text(e)
        info = self.d._taps.get(e.role)
        module: str | None = None
        if self.d.functional:
            self.diag("KD408", f"`{text}(...)` needs the model of `{e.role}`", path)
        elif info is not None and e.point == "classifier":
            module = info.classifier
            if module is None:
                self.diag(
                    "KD402",
                    f"`{text}`: no final classifier found on the model of `{e.role}`",
                    path,
                    help=f'apply a module by its path: `{e.role}."fc"(x)`',
                )
        elif info is not None:
            tap = ir.Tap(role=e.role, point=e.point, module=e.module, first=e.index, last=e.index)
            try:
                module = resolve_tap(tap, info, self.d.roles[e.role])[0].path
            except TapError as exc:
                self.diag(exc.code, f"`{text}`: {exc.message}", path, help=exc.help)
        call = info.first_call(module) if info is not None and module is not None else None
        in_shape = call.in_shape if call else None
        return ApplyNode(self.d, e.role, module or "", inputs, in_shape, text, path)

    def scale_free(self, e: ir.Expr) -> ir.Expr:
        """``e`` without a positive factor, for ``normalize``: ``normalize(c x) = normalize(x)``.

        Equal values, but the zero rows `normalize` clamps (a dead channel of a Gram matrix,
        ``relation(x, over=channel) / HW``) keep the gradient of the unscaled value instead of
        ``1 / c`` of it. Factors are numbers > 0 known before training and sizes (``B``, ``HW``).
        """
        body = e
        if isinstance(e, ir.Call) and (fdef := self.m.function(e.func)) is not None:
            body = expand(e, fdef)
        if isinstance(body, ir.BinOp) and body.op == "/" and self.positive(body.right):
            return self.scale_free(body.left)
        if isinstance(body, ir.BinOp) and body.op == "*" and self.positive(body.left):
            return self.scale_free(body.right)
        if isinstance(body, ir.BinOp) and body.op == "*" and self.positive(body.right):
            return self.scale_free(body.left)
        return e  # nothing to drop: the value as written

    def positive(self, e: ir.Expr) -> bool:
        """A number > 0 known before training, or a size (``B``, ``HW``, ``size(...)``)."""
        if isinstance(e, ir.Call) and e.func == "size":
            return True
        if isinstance(e, ir.BinOp) and e.op in ("*", "/"):
            return self.positive(e.left) and self.positive(e.right)
        if types.is_static(e, self.m):
            try:
                return float(self.value(e)) > 0
            except (EvalError, TypeError, ValueError):
                return False
        return False

    def primitive(
        self,
        func: str,
        operands: list[ir.Expr],
        kwargs: dict[str, Any],
        path: tuple[object, ...],
        indices: dict[ir.Tap, list[int]],
        fn: Any = None,
    ) -> Node:
        """A primitive or operator node, its inputs typed (axes, distribution) statically."""
        ins = [types.value_type(a, self.m, holes=self.holes) for a in operands]
        nodes = [self.node(a, path, indices) for a in operands]
        axes = [t.axes for t in ins]
        dist = [t.kind == "distribution" for t in ins]
        if fn is not None and fn.learned:
            return LearnedNode(func, nodes, kwargs, axes)
        # stopgrad & co. pass a distribution through as it is; `mean(p, over=...)` and the
        # rest read its probabilities.
        keep = fn is not None and ((fn.returns == "same" and func != "mean") or fn.log_inputs)
        return PrimNode(func, nodes, kwargs, axes, dist, keep_storage=keep)

    def margins(self, e: ir.Expr, path: tuple[object, ...]) -> list[torch.Tensor]:
        """OFD: margins from the batch norm before each tapped teacher pre-activation."""
        out = []
        for tap, _ in types.taps(e, self.m):
            if self.d.functional or tap.role not in self.d._taps:
                continue
            info = self.d._taps[tap.role]
            for point in self.d._points.get(tap) or resolve_tap(tap, info, self.d.roles[tap.role]):
                bn_path = info.preceding_batchnorm(point.path)
                if bn_path is None:
                    self.diag("KD402", "no batch norm before the tap, so no OFD margin", path)
                    continue
                out.append(TRANSFORMS["ofd_margin"](self.d.roles[tap.role].get_submodule(bn_path)))
        return out or [torch.zeros(())]

    def pipeline(
        self,
        node: Node,
        knowledge: tuple[ir.Call, ...],
        side: str,
        term: str,
        start: types.VType | None = None,
    ) -> Node:
        steps: list[Node] = []
        current = start or types.UNKNOWN
        last: tuple[ir.Expr, types.VType] | None = None  # the previous step's body, its input
        for call in knowledge:
            fdef = self.m.function(call.func)
            if fdef is not None or _is_primitive_call(call):
                body = (
                    expand(call, fdef, (ir.ArgRef(name=HOLE),))
                    if fdef is not None
                    else call.model_copy(update={"args": (ir.ArgRef(name=HOLE), *call.args)})
                )
                if call.func == "normalize" and last is not None:
                    # `gram | normalize`: the previous step without its positive factor.
                    unscaled = self.scale_free(last[0])
                    if unscaled is not last[0]:
                        self.holes[HOLE] = last[1]
                        steps[-1] = self.node(unscaled, ("term", term, side), {})
                self.holes[HOLE] = current
                steps.append(self.node(body, ("term", term, side), {}))
                last = (body, current)
                current = types.value_type(body, self.m, holes=self.holes)
                continue
            if call.func == "normalize" and last is not None:
                unscaled = self.scale_free(last[0])
                if unscaled is not last[0]:
                    self.holes[HOLE] = last[1]
                    steps[-1] = self.node(unscaled, ("term", term, side), {})
            current = types.knowledge_type(current, (call,), self.m)
            fn = FUNCTIONS[call.func]
            if fn.category == "adapter":
                steps.append(AdapterNode(call.func, HoleNode(), self.kwargs(call), term=term))
            else:
                if call.func == "normalize" and steps:
                    _normalize_unscaled(steps[-1])
                steps.append(TransformNode(call.func, [HoleNode()], self.kwargs(call)))
            last = None
        return PipelineNode(node, steps)

    def side(self, term: ir.Term, side: str, indices: dict[ir.Tap, list[int]]) -> Node:
        expr = term.source if side == "source" else term.target
        assert expr is not None
        path = ("term", term.name, side)
        # An ensemble read through one-input transforms (`teachers.logits`,
        # `stopgrad(teachers.logits)`): each member's transforms and knowledge come first, then
        # the combination, so soft targets are averaged as probabilities, never as logits.
        chain: list[ir.Call] = []
        inner: ir.Expr = expr
        while (
            isinstance(inner, ir.Call)
            and len(inner.args) == 1
            and inner.func in FUNCTIONS  # a user's `def` is no named transform
            and FUNCTIONS[inner.func].category == "transform"
        ):
            chain.append(inner)
            inner = inner.args[0]
        ens = self.m.ensemble(inner.role) if isinstance(inner, ir.Tap) else None
        if ens is not None and isinstance(inner, ir.Tap):
            members = []
            for r in ens.members:
                member: ir.Expr = inner.model_copy(update={"role": r})
                for call in reversed(chain):
                    member = call.model_copy(update={"args": (member,)})
                members.append(
                    self.pipeline(
                        self.node(member, path, indices),
                        term.knowledge,
                        side,
                        term.name,
                        types.value_type(member, self.m),
                    )
                )
            kind = types.apply_knowledge(types.expr_kind(expr, self.m), term.knowledge)
            return CombineNode(members, self.value(ens.weights), kind == "distribution")
        return self.pipeline(
            self.node(expr, path, indices),
            term.knowledge,
            side,
            term.name,
            types.value_type(expr, self.m),
        )

    def pair_indices(self, term: ir.Term) -> dict[ir.Tap, list[int]] | None:
        src = [t for t, _ in types.taps(term.source, self.m) if t.is_range]
        dst = [t for t, _ in types.taps(term.target, self.m) if t.is_range]
        for tap in src + dst:
            self.resolve(tap, ("term", term.name, "source" if tap in src else "target"))
        n_t = max((self.length(t) for t in src), default=1)
        n_s = max((self.length(t) for t in dst), default=1)
        pairs = _mapping_pairs(term.mapping, n_t, n_s)
        if term.mapping is None and src and dst and n_t != n_s:
            pairs = None  # two ranges of different lengths: a single tap broadcasts, a range not
        if pairs is None:
            self.diag(
                "KD310",
                f"`{term.name}` pairs {n_t} teacher layers with {n_s} student "
                "layers on these models",
                ("term", term.name, "target"),
                f"{n_s} layers here, {n_t} on the teacher side",
                help="add `map uniform`, `map last`, `map first` or `map all_pairs`",
            )
            return None
        out: dict[ir.Tap, list[int]] = {}
        for t in src:
            out[t] = [i for i, _ in pairs] if self.length(t) > 1 or n_t > 1 else [0] * len(pairs)
        for t in dst:
            out[t] = [j for _, j in pairs] if self.length(t) > 1 or n_s > 1 else [0] * len(pairs)
        return out

    def term(self, term: ir.Term) -> TermModule | None:
        fdef = self.m.function(term.loss.func)
        weight = (
            None
            if types.is_static(term.weight, self.m)
            else self.node(term.weight, ("term", term.name, "weight"), {})
        )
        if fdef is not None:
            return self.expression_term(term, fdef, weight)
        fn = FUNCTIONS.get(term.loss.func)
        if fn is None:
            return None
        # A learned loss sees both sides whole and pairs layers itself (SemCKD).
        learned = term.loss.func in LEARNED_LOSSES
        indices = self.pair_indices(term) if term.kind == "transfer" and not learned else {}
        if indices is None:
            return None
        source = self.side(term, "source", indices) if term.kind == "transfer" else None
        if term.kind == "transfer":
            target = self.side(term, "target", indices)
        else:
            target = self.node(term.target, ("term", term.name, "target"), indices)
        dist = term.kind == "transfer" and types.side_kind(term, "target", self.m) == "distribution"
        to_probs = dist and not fn.log_inputs
        subset = None
        if term.subset:
            part = next(p for p in self.m.data if p.name == term.subset)
            fn_subset = make_subset(part, self.m.params)
            subset = lambda env, f=fn_subset: f(env.labels, env.index)  # noqa: E731
        kwargs = self.kwargs(term.loss)
        return TermModule(
            term, source, target, term.loss.func, kwargs, to_probs, subset, weight_node=weight
        )

    def subset(self, term: ir.Term) -> Any:
        if not term.subset:
            return None
        part = next(p for p in self.m.data if p.name == term.subset)
        fn_subset = make_subset(part, self.m.params)
        return lambda env, f=fn_subset: f(env.labels, env.index)

    def expression_term(
        self, term: ir.Term, fdef: ir.FunctionDef, weight: Node | None
    ) -> TermModule | None:
        """A term whose loss is a `def`: its sides bound to the def's first parameters."""
        indices = self.pair_indices(term) if term.kind == "transfer" else {}
        if indices is None:
            return None
        sides: dict[str, types.VType] = {}
        source: Node | None = None
        if term.kind == "transfer":
            source = self.side(term, "source", indices)
            target = self.side(term, "target", indices)
            for side in ("source", "target"):
                raw = types.value_type(getattr(term, side), self.m)
                sides[side] = types.knowledge_type(raw, term.knowledge, self.m)
        else:
            target = self.node(term.target, ("term", term.name, "target"), indices)
            sides["target"] = types.value_type(term.target, self.m)
        if term.kind == "supervise":
            implicit: tuple[ir.Expr, ...] = (ir.ArgRef(name=STUDENT_SIDE),)
        else:
            implicit = (ir.ArgRef(name=TEACHER_SIDE), ir.ArgRef(name=STUDENT_SIDE))
        self.holes = types.loss_holes(term.loss.func, sides)
        loss = self.node(expand(term.loss, fdef, implicit), ("term", term.name, "loss"), {})
        self.holes = {}
        return TermModule(
            term,
            source,
            target,
            term.loss.func,
            {},
            False,
            self.subset(term),
            loss_node=loss,
            weight_node=weight,
        )


def _normalize_unscaled(node: Node) -> None:
    """`normalize` of a mean over positions (gram, fsp) normalises the sum instead.

    Equal values (normalisation ignores a positive factor), but the zero rows it clamps (dead
    channels) keep the gradient of the unscaled matrix rather than 1/(H*W) of it.
    """
    if isinstance(node, TransformNode) and node.func in UNSCALED:
        node.unscaled = True


def compile_spec(
    spec: Lowered | ir.Method,
    models: dict[str, nn.Module] | None,
    example_batch: Any,
    *,
    num_classes: int | None = None,
    num_samples: int | None = None,
    train_data: Any = None,
    device: str | torch.device | None = None,
) -> Distiller:
    """Compile a checked method onto models.

    Args:
        spec: a lowered method (from :func:`kdspec.api.load_method`) or a bare IR method.
        models: role name -> model. Virtual roles need none; ``ema``/``snapshot`` roles are
            copied from their source. ``None`` compiles the terms alone (functional mode):
            ``example_batch`` is then a dict from tap text to tensors (plus ``labels``).
        example_batch: ``(x, y[, index])`` used for the dry runs that resolve taps and size
            adapters.
        num_classes: number of classes (default: from the first model's logits).
        num_samples: size of the training set (memory banks).
        train_data: the training dataset (needed by the ``same_class`` view).
        device: where to put the compiled module.

    Returns:
        A :class:`Distiller`.

    Raises:
        KdError: KD4xx diagnostics (unknown module paths, shapes no adapter can fix, missing
            models), pointing at the spec lines.
    """
    lowered = spec if isinstance(spec, Lowered) else Lowered(spec, SourceMap(None))  # type: ignore[arg-type]
    smap = lowered.source_map if lowered.source_map.source is not None else None
    d = Distiller(lowered, models, num_classes, train_data)
    d.num_samples = num_samples
    b = _Builder(d, smap)
    m = d.method
    batch = _unpack(example_batch)
    if models is not None:
        for role in m.roles:
            if role.mode == "virtual":
                continue
            if role.mode in ("ema", "snapshot"):
                src = models.get(role.source or "")
                if src is None:
                    b.diag(
                        "KD408",
                        f"`{role.name}` copies `{role.source}`, which has no model",
                        ("role", role.name),
                    )
                    continue
                copy_ = copy.deepcopy(src)
                for p in copy_.parameters():
                    p.requires_grad_(False)
                d.roles[role.name] = copy_
                continue
            model = models.get(role.name)
            if model is None:
                b.diag(
                    "KD408",
                    f"{role.kind} `{role.name}` has no model",
                    ("role", role.name),
                    "needs a model",
                    help=f'bind it in the run file: `[models] {role.name} = "zoo:..."`',
                )
                continue
            d.roles[role.name] = model
        if device is not None:
            d.roles.to(device)
            batch = _Batch(
                _to(batch.x, device), _to(batch.labels, device), _to(batch.index, device)
            )
        for name, model in d.roles.items():
            try:
                d._taps[name] = discover(model, batch.x)
            except Exception as exc:  # a model that cannot run the example is a user error
                b.diag(
                    "KD403",
                    f"the model of `{name}` fails on the example batch: {exc}",
                    ("role", name),
                )
        d.causal = any(is_causal(model) for model in d.roles.values())
        if d.num_classes is None:
            for info in d._taps.values():
                if info.logits_shape:
                    d.num_classes = info.logits_shape[-1]
                    break
    else:
        d._given = batch.taps or {}
    for stage in m.stages:
        for k, (giver, taker) in enumerate(stage.handoffs):
            if giver in d.roles and taker in d.roles:
                a, c = d.roles[giver].state_dict(), d.roles[taker].state_dict()
                same = a.keys() == c.keys() and all(a[n].shape == c[n].shape for n in a)
                if not same:
                    b.diag(
                        "KD403",
                        f"`handoff {giver} -> {taker}` needs the same architecture on "
                        "both roles, but their weights differ in names or shapes",
                        ("stage", stage.name, "handoff", k),
                        "weights cannot be handed over",
                        help=f"bind `{taker}` to the same model as `{giver}` in the run file",
                    )
    for part in m.data:
        if part.kind == "view":
            try:
                d._views[part.name] = make_view(part, m.params, train_data)
            except ValueError as exc:
                b.diag("KD502", str(exc), ("data", part.name))
            if isinstance(d._views.get(part.name), BatchRewrite):
                _bind_rewrite(d, b, part)
    if not b.diags:
        for term in m.terms:
            module = b.term(term)
            if module is not None:
                d.terms[term.name] = module
        for who, value in m.predictions.items() if models is not None else ():
            # (functional mode compiles the terms alone: no model, nothing to deploy)
            d.predictions[who] = b.node(value, ("predict", who, "value"), {})
    if b.diags:
        raise KdError(b.diags)
    for name, w in d._weights.items():
        if not types.is_static(w, m):
            d._const_weights[name] = 1.0  # computed from the batch by the term itself
        elif not uses_progress(w, m.params):
            d._const_weights[name] = float(evaluate(w, m.params))  # type: ignore[arg-type]
    d.stage_plans = [_plan(s, m) for s in m.effective_stages()]
    _dry_run(
        d,
        b,
        example_batch
        if device is None
        else (batch.x, batch.labels, batch.index)
        if batch.taps is None
        else example_batch,
    )
    if b.diags:
        raise KdError(b.diags)
    d._stage = None
    if device is not None:
        d.to(device)
    return d


def _position_labels(batch: _Batch, causal: bool) -> torch.Tensor | None:
    """The label each output position is scored against: on token data of causal LMs the next
    token's (labels are unshifted, as in Hugging Face), so `cross_entropy` on `s.logits` is the
    next-token loss; the last position predicts nothing (-100)."""
    labels = batch.labels
    if labels is None or labels.dim() != 2 or not causal:
        return labels
    if not (isinstance(batch.x, dict) and "input_ids" in batch.x):
        return labels
    out = torch.full_like(labels, -100)
    out[:, :-1] = labels[:, 1:]
    return out


def _bind_rewrite(d: Distiller, b: _Builder, part: ir.DataPart) -> None:
    """A view that generates data rewrites the batch before any role runs: every role must see
    it (labels and masks are the generated ones), and its generator must have a model."""
    view: BatchRewrite = d._views.pop(part.name)
    m = d.method
    blind = [r.name for r in m.roles if r.mode != "virtual" and r.view != part.name]
    blind += [t.role for t in find_all(m, ir.Tap) if t.view not in (None, part.name)]
    if blind or d._rewrite is not None:
        why = f"`{blind[0]}` does not see it" if blind else "another view already generates"
        b.diag(
            "KD502",
            f"view `{part.name}` ({part.func}) rewrites the whole batch, so every role must see "
            f"it and it must be the method's only generated view: {why}",
            ("data", part.name),
            help=f"add `{blind[0] if blind else 'ROLE'} sees {part.name}` for every role",
        )
        return
    role = next((r.name for r in m.roles if r.kind == view.role_kind), None)
    if role is None or (not d.functional and role not in d.roles):
        b.diag(
            "KD502",
            f"view `{part.name}` ({part.func}) samples from the method's {view.role_kind}, "
            f"and it has no {view.role_kind} with a model",
            ("data", part.name),
        )
        return
    d._views[part.name] = lambda x, y: x  # the batch is already rewritten
    d._rewrite = (view, role)


def _is_primitive_call(e: ir.Call) -> bool:
    """A call compiled as a typed primitive (legacy transforms keep their own nodes)."""
    fn = FUNCTIONS.get(e.func)
    if fn is None:
        return False
    return fn.category == "primitive" or (
        (fn.category == "loss" and e.func in LOSSES)  # a loss's value inside an expression
        or (e.func in ("softmax", "log_softmax", "normalize", "mean") and "over" in e.kwargs)
    )


def _batch_size(batch: _Batch) -> int | None:
    for v in (batch.labels, batch.x, *((batch.taps or {}).values())):
        if isinstance(v, list | tuple) and v:
            v = v[0]
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return None


def _whole(v: Any) -> Any:
    """Whole numbers as ints: spec numbers evaluate to floats, sizes and counts must be ints."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_whole(x) for x in v]
    return v


def _to(x: Any, device: str | torch.device) -> Any:
    if isinstance(x, dict):  # token data: the models' keyword inputs
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _plan(stage: ir.Stage, m: ir.Method) -> StagePlan:
    duration = float(evaluate(stage.duration, m.params)) if stage.duration else None  # type: ignore[arg-type]
    repeat = int(evaluate(stage.repeat, m.params)) if stage.repeat else 1  # type: ignore[arg-type]
    return StagePlan(stage.name, duration, stage.unit, repeat, stage.handoffs)


def _dry_run(d: Distiller, b: _Builder, example_batch: Any) -> None:
    """Run every term once: builds adapters, and turns shape errors into KD403 diagnostics."""
    modes = {name: m.training for name, m in d.roles.items()}
    d._trained = set()
    for stage in d.method.effective_stages():
        d._trained |= d.graph.trained_roles(stage)
    d.eval()
    try:
        parts = [*d.terms.values(), *d.predictions.values()]
        d._needed = d._collect_points(parts)  # type: ignore[arg-type]
        env = d._begin(example_batch)
        for name, term in d.terms.items():
            try:
                with torch.no_grad():
                    value = term(env)
                if not torch.isfinite(value).all():
                    b.diag(
                        "KD403",
                        f"`{name}` gives a non-finite value on the example batch",
                        ("term", name),
                    )
            except ShapeMismatch as exc:
                b.diag(
                    "KD403",
                    f"`{name}`: the two sides have different shapes "
                    f"({exc.source_shape} from the teacher, {exc.target_shape} from the "
                    "student)",
                    ("term", name, "target"),
                    "no adapter maps this side",
                    help="wrap the student side in an adapter, e.g. "
                    "`to conv1x1(...)` for feature maps or `to linear(...)` for vectors",
                )
            except AdapterShapeError as exc:
                b.diag("KD403", f"`{name}`: {exc}", ("term", name, "target"), "cannot be adapted")
            except ApplyShapeError as exc:
                _apply_shape_diag(b, exc, exc.where or ("term", name))
            except TapError as exc:
                b.diag(exc.code, f"`{name}`: {exc.message}", ("term", name), help=exc.help)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                b.diag(
                    "KD403",
                    f"`{name}` fails on the example batch: {exc}",
                    ("term", name),
                    "while computing this term",
                )
        _dry_run_predictions(d, b, env)
    finally:
        d._forward_cache, d._view_cache, d._batch = {}, {}, None
        d.train()
        for name, mode in modes.items():
            d.roles[name].train(mode)


def _apply_shape_diag(b: _Builder, exc: ApplyShapeError, path: tuple[object, ...]) -> None:
    b.diag(
        "KD403",
        str(exc),
        path,
        f"`{exc.module}` cannot take this value",
        help=f"map the value with an adapter, sized to the module's input: "
        f"`{exc.module}(linear(x))` for vectors, `{exc.module}(conv1x1(x))` for feature maps",
    )


def _dry_run_predictions(d: Distiller, b: _Builder, env: Env) -> None:
    """Each `predict` once on the example batch: class scores [B, classes], or KD403."""
    for role, node in d.predictions.items():
        path = ("predict", role, "value")
        try:
            with torch.no_grad():
                value = node(env)
        except ApplyShapeError as exc:
            _apply_shape_diag(b, exc, path)
            continue
        except AdapterShapeError as exc:
            b.diag("KD403", f"`predict {role}`: {exc}", path, "cannot be adapted")
            continue
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            b.diag("KD403", f"`predict {role}` fails on the example batch: {exc}", path)
            continue
        out = value[0] if len(value) == 1 else None
        want = (env.batch_size, d.num_classes)
        if not isinstance(out, torch.Tensor) or (out.dim() != 2 or tuple(out.shape) != want):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else f"{len(value)} values"
            b.diag(
                "KD403",
                f"`predict {role}` gives {shape}, not class scores {list(want)}",
                path,
                "not [batch, classes]",
            )


def _scheduled_parts(m: ir.Method) -> list[tuple[str, tuple[str, str]]]:
    """The parts of a method whose values follow a schedule (named for KD504)."""

    def has(e: ir.Expr | None) -> bool:
        for n in ir.walk(e, m):
            if isinstance(n, ir.ParamRef) and uses_progress(n, m.params):
                return True
            fn = FUNCTIONS.get(n.func) if isinstance(n, ir.Call) else None
            if fn is not None and fn.category == "schedule":
                return True
        return False

    out = [(f"`{t.name}`", ("term", t.name)) for t in m.terms if any(map(has, t.expressions()))]
    out += [(f"ensemble `{x.name}`", ("ensemble", x.name)) for x in m.ensembles if has(x.weights)]
    out += [
        (f"{r.kind} `{r.name}`", ("role", r.name))
        for r in m.roles
        if any(has(v) for v in r.options.values())
    ]
    return out
