"""Run a compiled method: the :class:`Distiller`, and :func:`compile_spec`, which makes one.

Compiling goes bind -> build -> plan: :func:`~kdspec.compiler.bind.bind` binds the models to
the roles and runs the example batch once through each (modules, calls, shapes);
:func:`~kdspec.compiler.build.build` resolves every tap to its hook points and builds the term
modules; the result is a frozen :class:`~kdspec.compiler.plan.CompiledPlan`. ``Distiller(plan)``
runs it and holds only per-forward state (the stage, the batch, the forwards of this batch).
A dry run of every term on the example batch then sizes the adapters and reports, against the
spec line, any shape that no adapter can fix, before training starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdspec.compiler.bind import Batch, Reporter, bind, unpack
from kdspec.compiler.build import StagePlan, build, constant_weights, stage_plans
from kdspec.compiler.hooks import HookPoint, TapError, TapSession
from kdspec.compiler.inference import FoldPlan, fold_plan
from kdspec.compiler.nodes import (
    ApplyNode,
    ApplyShapeError,
    Env,
    MaskError,
    ShapeMismatch,
    TapNode,
    TermModule,
)
from kdspec.compiler.plan import CompiledPlan
from kdspec.compiler.sequence import aligned_labels, is_token_inputs, token_masks
from kdspec.compiler.stages import StageLoop, StageRun, plan_stages
from kdspec.compiler.teacher_cache import DETERMINISTIC_VIEWS, CacheSpec, Peers, TeacherCache
from kdspec.diagnostics import KdError
from kdspec.graph import KdGraph, build_graph, types
from kdspec.ir import Lowered, SourceMap
from kdspec.ir import models as ir
from kdspec.ir.evaluate import Progress, evaluate, uses_progress
from kdspec.ops.adapters import AdapterShapeError
from kdspec.vocabulary import FUNCTIONS
from kdspec.vocabulary.axes import token_data

__all__ = ["DistillOutput", "Distiller", "StagePlan", "compile_spec"]

Report = Callable[..., None]


@dataclass
class DistillOutput:
    """The total loss and each term's weighted value (named after its spec line).

    ``terms`` are detached, for logging (``float(v)``); ``grad_terms`` are the same values with
    their graph, for a loop that needs one term's gradient.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Distiller(nn.Module):
    """A compiled method: ``forward(batch)`` returns the total loss and every named term.

    It drops into any training loop: call :meth:`set_stage` when a stage starts, optimise
    :meth:`trainable_parameters`, call :meth:`after_step` after each optimizer step (EMA
    roles) and :meth:`finish_repeat` after each repetition of a stage (generations).
    Make one with :func:`compile_spec`; ``Distiller(plan)`` runs a
    :class:`~kdspec.compiler.plan.CompiledPlan`.
    """

    def __init__(self, plan: CompiledPlan):
        super().__init__()
        self.compiled = plan
        self.lowered = plan.lowered
        self.method: ir.Method = plan.method
        self.graph = plan.graph
        self.params_ir = self.method.params
        self.num_classes = plan.num_classes
        self.num_samples = plan.num_samples
        self.train_data = plan.train_data
        self.roles = plan.roles
        self.terms = plan.terms
        self.predictions = plan.predictions
        for node in [*self.terms.modules(), *self.predictions.modules()]:
            if isinstance(node, ApplyNode):  # its module is read from this Distiller's roles
                object.__setattr__(node, "_owner", self)
        self.functional = plan.functional
        self.causal = plan.causal
        self.token_data = plan.token_data  # the batches are tokens (taps carry a token axis)
        self.stage_plans: list[StagePlan] = list(plan.stage_plans)
        self._weights: dict[str, ir.Expr] = {t.name: t.weight for t in self.method.terms}
        self._stage: ir.Stage | None = None
        self._trained: set[str] = set()
        self._parked: set[str] = set()  # frozen roles `train()` put in eval mode
        self._needed: dict[tuple[str, str | None], list[HookPoint]] = {}
        self._teacher_cache: TeacherCache | None = None
        # set by the trainer under torchrun: the global batch's rows of a per-sample tensor
        self.gather_batch: Callable[[torch.Tensor], torch.Tensor] | None = None
        # True: frozen roles run with batch norm folded into the convolution before it, where
        # no tap reads inside the pair (kdspec.compiler.inference): tapped values then equal
        # the eager ones to ~1e-6, not bit for bit, so it is an option (`[train] fold_batch_norm`).
        self.fold_batch_norm = False
        self._plans: dict[tuple[str, tuple[HookPoint, ...]], FoldPlan] = {}
        self._forward_cache: dict[tuple[str, str | None], TapSession] = {}
        self._view_cache: dict[str | None, Any] = {}
        self._batch: Batch | None = None
        self._given: dict[str, Any] = dict(plan.given)
        # Where training is: set per batch by `stages()`; the last progress a forward used.
        self._position: Progress | None = None
        self._last_progress: Progress | None = None
        self._scheduled: list[tuple[str, tuple[str, str]]] = _scheduled_parts(self.method)
        # A frozen role's forward ends at its last tap (an exception from a hook); off for
        # roles under torch.compile, where that exception would break the graph.
        self.stop_frozen_early = True

    # -- running roles ----------------------------------------------------------------------

    def _role_view(self, tap: ir.Tap) -> str | None:
        if tap.view is not None:
            return tap.view
        role = self.method.role(tap.role)
        return role.view if role is not None else None

    def _input_for(self, view: str | None) -> Any:
        assert self._batch is not None
        if view not in self._view_cache:
            fn = self.compiled.views.get(view) if view is not None else None
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
                    with torch.no_grad(), self._inference_plan(role, session.points, x):
                        session.run(x, stop_early=self.stop_frozen_early)
                finally:
                    if was_training:
                        model.train()
                if self._cached(role):
                    self._store_cached(role, view, session)
        self._forward_cache[key] = session
        return session

    def _inference_plan(self, role: str, points: list[HookPoint], x: Any) -> FoldPlan:
        """How a frozen role runs: its batch norms folded (planned on its first batch)."""
        if not self.fold_batch_norm:
            return FoldPlan()
        key = (role, tuple(points))
        plan = self._plans.get(key)
        if plan is None:
            plan = FoldPlan()
            model = self.roles[role]
            if not model.training:

                def run() -> dict[Any, Any]:
                    s = TapSession(model, list(points))
                    with s:
                        s.run(x, stop_early=True)
                    return s.values

                points_of = self.compiled.points.items()
                read = {p.path for t, ps in points_of if t.role == role for p in ps}
                info = self.compiled.model_taps.get(role)  # and the batch norm before each (OFD)
                norms = {info.preceding_batchnorm(p) for p in read} if info is not None else set()
                plan = fold_plan(model, run, read | {n for n in norms if n})
            self._plans[key] = plan
        return plan

    def folded_batch_norms(self) -> dict[str, list[tuple[str, str]]]:
        """Per frozen role, the ``(convolution, batch norm)`` pairs folded so far."""
        out: dict[str, list[tuple[str, str]]] = {}
        for (role, _), plan in self._plans.items():
            out.setdefault(role, [])
            out[role] += [p for p in plan.folded if p not in out[role]]
        return out

    def cache_frozen_outputs(
        self,
        enabled: bool = True,
        *,
        spec: CacheSpec | None = None,
        identity: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> TeacherCache | None:
        """Compute what frozen roles' taps produce once per training sample and reuse it.

        Needs batches ``(x, y, index[, replay])`` with each sample's index into the training
        set, and inputs that are the same every epoch for a given ``(index, replay)``: random
        views are refused here; random augmentation in the loader must be off or replayed
        (:class:`~kdspec.data.augment.ReplayedAugmentation`, with ``spec.replays`` equal to its
        replays), which the caller ensures and describes in ``identity`` (with the data's
        identity: required by a disk cache). ``ema`` and ``snapshot`` roles change during
        training and are never cached; only batches seen in training mode are read from or
        written to the cache; a stage that trains a ``frozen`` role starts its cache afresh.

        Args:
            enabled: False turns the cache off.
            spec: Storage (memory or disk, fp32/fp16/top-k, size bound, replays).
            identity: What determines the inputs besides the sample index (part of the key).
            log: Where one-line messages go (a corrupt file rebuilt).

        Raises:
            ValueError: the number of training samples is unknown, or a frozen role reads a
                random view.
        """
        if not enabled:
            self._teacher_cache = None
            return None
        if self.num_samples is None:
            raise ValueError("caching teacher outputs needs the training set size (num_samples)")
        for role in self.method.roles:
            if role.mode != "frozen":
                continue
            for tap in self.compiled.points:
                view = self._role_view(tap) if tap.role == role.name else None
                part = next((p for p in self.method.data if p.name == view), None)
                if part is not None and part.func not in DETERMINISTIC_VIEWS:
                    raise ValueError(
                        f"cannot cache `{role.name}`'s outputs: it reads view `{view}` "
                        f"(`{part.func}`), which is random, so its outputs change every epoch"
                    )
        self._teacher_cache = TeacherCache(
            self.num_samples, spec, identity, log or (lambda message: None)
        )
        return self._teacher_cache

    @property
    def output_cache(self) -> TeacherCache | None:
        """The cache of frozen roles' outputs (None: off; see :meth:`cache_frozen_outputs`)."""
        return self._teacher_cache

    def synchronize_output_cache(self, peers: Peers) -> None:
        """Share the output cache among the processes of a data-parallel run: each rank's new
        rows go to the others, and the current stage's cache files of earlier runs are opened
        (by rank 0 first). A collective: every rank calls it at the same point."""
        cache = self._teacher_cache
        if cache is None:
            return
        cache.share(peers)
        wanted = []
        for (role, view), points in self._needed.items():
            r = self.method.role(role)
            if r is not None and r.mode == "frozen" and role not in self._trained:
                key = self._key_of(role, view)
                wanted.append((role, view, points, key["model"], key["view_ir"]))
        cache.synchronize(wanted)

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
        assert self._teacher_cache is not None and self._batch is not None
        found = self._teacher_cache.lookup(
            role,
            view,
            session.points,
            self._index(),
            self._batch.replay,
            **self._key_of(role, view),
        )
        if found is not None:
            session.values = dict(found)
        return found is not None

    def _key_of(self, role: str, view: str | None) -> dict[str, Any]:
        """What a disk cache's key reads from the role and its view."""
        part = next((p for p in self.method.data if p.name == view), None)
        view_ir = part.model_dump(mode="json") if part is not None else None
        return {"model": self.roles[role], "view_ir": view_ir}

    def _store_cached(self, role: str, view: str | None, session: TapSession) -> None:
        assert self._teacher_cache is not None and self._batch is not None
        session.values = self._teacher_cache.store(
            role,
            view,
            session.values,
            self._index(),
            self._batch.replay,
            **self._key_of(role, view),
        )

    def _read(self, tap: ir.Tap, indices: list[int] | None) -> list[torch.Tensor]:
        if self.functional:
            value = self._given.get(types.tap_text(tap))
            if value is None:
                raise TapError("KD402", f"no tensor given for `{types.tap_text(tap)}`")
            values = list(value) if isinstance(value, list | tuple) else [value]
        else:
            session = self._run_role(tap.role, self._role_view(tap))
            values = [session.get(p) for p in self.compiled.points[tap]]
        if indices is not None:
            values = [values[i] for i in indices]
        return values

    # -- stages and parameters --------------------------------------------------------------

    def _collect_points(
        self, terms: list[TermModule]
    ) -> dict[tuple[str, str | None], list[HookPoint]]:
        needed: dict[tuple[str, str | None], list[HookPoint]] = {}
        for term in terms:
            for node in term.modules():
                if isinstance(node, TapNode) and node.tap in self.compiled.points:
                    key = (node.tap.role, self._role_view(node.tap))
                    needed.setdefault(key, []).extend(self.compiled.points[node.tap])
        return {k: list(dict.fromkeys(v)) for k, v in needed.items()}

    def trains(self, role: str) -> bool:
        """Whether the current stage updates ``role``'s weights by gradient."""
        return role in self._trained

    def set_stage(self, name: str) -> None:
        """Switch to a stage: its terms become active and its trainable set gets gradients."""
        stage = self.compiled.stage(name)
        self._stage = stage
        self._trained = self.graph.trained_roles(stage)
        self._needed = self._collect_points(self.compiled.active_terms(stage))
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

    @property
    def stage(self) -> ir.Stage | None:
        """The stage set by :meth:`set_stage` (``None`` before the first)."""
        return self._stage

    def reset_stage(self) -> None:
        """Forget the stage, as compiled: the next forward starts at the first stage."""
        self._stage = None

    def train(self, mode: bool = True) -> Distiller:
        """Set training mode; the current stage's frozen roles go to (and stay in) eval mode,
        so that a step need not switch them."""
        super().train(mode)
        if self._stage is not None:
            self._parked = {n for n in self.roles if n not in self._trained}
            for name in self._parked:
                self.roles[name].eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the current stage optimises: trained roles (or their listed parts), adapters."""
        return self.compiled.trainable_parameters(self._stage or self.method.effective_stages()[0])

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
        if name in self.compiled.const_weights:
            return self.compiled.const_weights[name]
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
            for term in self.compiled.active_terms(self._stage):
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
        self._batch = unpack(batch)
        if self.compiled.rewrite is not None and self._batch.x is not None:
            view, role = self.compiled.rewrite  # every role sees generated data (checked at bind)
            b = self._batch
            assert b.labels is not None
            x, labels = view(b.x, b.labels, b.index, self.roles[role])
            self._batch = Batch(x, labels, b.index)
        if self._batch.taps is not None:
            self._given = self._batch.taps
        self._forward_cache, self._view_cache = {}, {}
        b = self._batch
        return Env(
            masks=token_masks(b.x, b.labels, b.response, b.attention, causal=self.causal),
            token_labels=aligned_labels(b.labels, self.causal),
            read=self._read,
            batch_size=self._batch.size(),
            labels=_position_labels(self._batch, self.causal),
            index=self._batch.index,
            num_classes=self.num_classes,
            num_samples=self.num_samples,
            progress=progress,
            gather_batch=self.gather_batch,
        )

    def raw_terms(self, batch: Any) -> dict[str, torch.Tensor]:
        """Every term of every stage, unweighted (for conformance tests)."""
        saved = self._needed
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
        """The plan this Distiller runs (its ``describe()`` is what ``kdspec plan`` prints)."""
        return self.compiled

    @torch.no_grad()
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
            out: torch.Tensor = node(env)[0]
            return out
        finally:
            self._needed = saved
            self._forward_cache, self._view_cache, self._batch = {}, {}, None

    def _dry_run_predictions(self, env: Env, report: Report) -> None:
        """Each `predict` once on the example batch: class scores [B, classes], or KD403."""
        for role, node in self.predictions.items():
            path = ("predict", role, "value")
            try:
                with torch.no_grad():
                    value = node(env)
            except ApplyShapeError as exc:
                _apply_shape_diag(exc, path, report)
                continue
            except AdapterShapeError as exc:
                report("KD403", f"`predict {role}`: {exc}", path, "cannot be adapted")
                continue
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                report("KD403", f"`predict {role}` fails on the example batch: {exc}", path)
                continue
            out = value[0] if len(value) == 1 else None
            want = (env.batch_size, self.num_classes)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or tuple(out.shape) != want:
                shape = list(out.shape) if isinstance(out, torch.Tensor) else f"{len(value)} values"
                msg = f"`predict {role}` gives {shape}, not class scores {list(want)}"
                report("KD403", msg, path, "not [batch, classes]")

    def dry_run(self, example_batch: Any, report: Report) -> None:
        """Run every term once: builds adapters, and reports shape errors as KD403 (or the
        tap's code) to ``report(code, message, path, label="", help=None)``."""
        modes = {name: m.training for name, m in self.roles.items()}
        self._trained = set()
        for stage in self.method.effective_stages():
            self._trained |= self.graph.trained_roles(stage)
        self.eval()
        try:
            parts = [*self.terms.values(), *self.predictions.values()]
            self._needed = self._collect_points(parts)  # type: ignore[arg-type]
            env = self._begin(example_batch)
            for name, term in self.terms.items():
                try:
                    value = term(env)
                except (
                    ShapeMismatch,
                    AdapterShapeError,
                    TapError,
                    ApplyShapeError,
                    MaskError,
                ) as exc:
                    _report_failure(name, exc, report)
                except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                    report(
                        "KD403",
                        f"`{name}` fails on the example batch: {exc}",
                        ("term", name),
                        "while computing this term",
                    )
                else:
                    if not torch.isfinite(value).all():
                        msg = f"`{name}` gives a non-finite value on the example batch"
                        report("KD403", msg, ("term", name))
            self._dry_run_predictions(env, report)
        finally:
            self._forward_cache, self._view_cache, self._batch = {}, {}, None
            self._stage = None
            self.train()
            for name, mode in modes.items():
                self.roles[name].train(mode)


class Deployed(nn.Module):
    """A role with a ``predict``: ``forward(x)`` gives the spec's prediction (evaluation)."""

    def __init__(self, distiller: Distiller, role: str):
        super().__init__()
        self.distiller = distiller
        self.role = role

    def forward(self, x: Any) -> torch.Tensor:
        return self.distiller.predict(self.role, x)


def _position_labels(batch: Batch, causal: bool) -> torch.Tensor | None:
    """The label each output position is scored against: on token data of causal LMs the next
    token's (labels are unshifted, as in Hugging Face), so `cross_entropy` on `s.logits` is the
    next-token loss; the last position predicts nothing (-100)."""
    if not is_token_inputs(batch.x):
        return batch.labels
    return aligned_labels(batch.labels, causal)


def _check_token_axes(report: Reporter, m: ir.Method, graph: KdGraph, tokens: bool) -> None:
    """Axis errors under the data the method is compiled on (the checker reported only those
    wrong on any data): `over=token` on images, `over=space` on token features."""
    from kdspec.passes.check_axes import axis_diagnostics
    from kdspec.passes.context import PassContext

    note = (
        "the example batch is token data (`input_ids`): taps carry a token axis after the batch"
        if tokens
        else "the example batch is not token data (no `input_ids`): taps have no token axis"
    )
    for d in axis_diagnostics(PassContext(m, graph, report.smap)):
        report.diags.append(dataclasses.replace(d, notes=(*d.notes, note)))


def _report_failure(name: str, exc: Exception, report: Report) -> None:
    """A term's failure on the example batch whose kind says what to do."""
    if isinstance(exc, ShapeMismatch):
        report(
            "KD403",
            f"`{name}`: the two sides have different shapes "
            f"({exc.source_shape} from the teacher, {exc.target_shape} from the student)",
            ("term", name, "target"),
            "no adapter maps this side",
            help="wrap the student side in an adapter, e.g. "
            "`to conv1x1(...)` for feature maps or `to linear(...)` for vectors",
        )
    elif isinstance(exc, AdapterShapeError):
        report("KD403", f"`{name}`: {exc}", ("term", name, "target"), "cannot be adapted")
    elif isinstance(exc, TapError):
        report(exc.code, f"`{name}`: {exc.message}", ("term", name), help=exc.help)
    elif isinstance(exc, ApplyShapeError):
        _apply_shape_diag(exc, exc.where or ("term", name), report)
    elif isinstance(exc, MaskError):
        report(
            "KD502",
            f"`{name}`: {exc}",
            ("term", name),
            "reads a mask the batch lacks",
            help="token batches carry `attention_mask`, `labels` (-100: no loss) and, "
            "for prompt + response data, `response_mask`",
        )


def _apply_shape_diag(exc: ApplyShapeError, path: tuple[object, ...], report: Report) -> None:
    report(
        "KD403",
        str(exc),
        path,
        f"`{exc.module}` cannot take this value",
        help=f"map the value with an adapter, sized to the module's input: "
        f"`{exc.module}(linear(x))` for vectors, `{exc.module}(conv1x1(x))` for feature maps",
    )


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
    method = lowered.method
    report = Reporter(lowered.source_map if lowered.source_map.source is not None else None)
    binding = bind(
        method,
        models,
        example_batch,
        report,
        num_classes=num_classes,
        train_data=train_data,
        device=device,
    )
    graph = build_graph(method)
    if report.diags:
        raise KdError(report.diags)
    with token_data(binding.token_data):
        _check_token_axes(report, method, graph, binding.token_data)
        built = build(method, binding, report)
    if report.diags:
        raise KdError(report.diags)
    plan = CompiledPlan(
        lowered=lowered,
        graph=graph,
        roles=binding.roles,
        model_taps=binding.taps,
        points=built.points,
        terms=built.terms,
        lets=built.lets,
        views=binding.views,
        stage_plans=tuple(stage_plans(method)),
        const_weights=constant_weights(method),
        num_classes=binding.num_classes,
        num_samples=num_samples,
        functional=binding.functional,
        given=binding.given,
        train_data=train_data,
        causal=binding.causal,
        token_data=binding.token_data,
        rewrite=binding.rewrite,
        predictions=built.predictions,
    )
    d = Distiller(plan)
    batch = binding.batch
    moved = (batch.x, batch.labels, batch.index) if batch.taps is None else example_batch
    d.dry_run(example_batch if device is None else moved, report)
    if report.diags:
        raise KdError(report.diags)
    if device is not None:
        d.to(device)
    return d


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
