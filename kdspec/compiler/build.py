"""Building: the term modules of a bound method, and the constants the plan fixes.

The second step of compiling (bind -> build -> plan -> run). :class:`TermBuilder` turns each
term's expressions into modules (:mod:`kdspec.compiler.nodes`), resolving every tap it meets to
the hook points it reads on its role's model and sharing each ``let`` between the terms that
read it; :func:`constant_weights` and :func:`stage_plans` evaluate what does not change while
training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdspec.compiler.bind import Binding, Reporter
from kdspec.compiler.hooks import HookPoint, TapError, resolve_tap
from kdspec.compiler.nodes import (
    AdapterNode,
    ApplyNode,
    ArgNode,
    CombineNode,
    ConstNode,
    HoleNode,
    LearnedNode,
    LetNode,
    Node,
    PipelineNode,
    PrimNode,
    TapNode,
    TermModule,
    TransformNode,
    VirtualNode,
)
from kdspec.compiler.views import make_subset
from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.ir.evaluate import EvalError, compile_value, evaluate, uses_progress
from kdspec.ir.functions import HOLE, STUDENT_SIDE, TEACHER_SIDE, expand
from kdspec.ir.printer import module_text
from kdspec.ir.traverse import Visitor
from kdspec.ops import LOSSES, TRANSFORMS
from kdspec.ops.components import LEARNED_LOSSES
from kdspec.vocabulary import FUNCTIONS

__all__ = ["Built", "StagePlan", "TermBuilder", "build", "constant_weights", "stage_plans"]


@dataclass(frozen=True)
class StagePlan:
    """A stage as the trainer runs it."""

    name: str
    duration: float | None
    unit: str | None  # "epochs" | "steps" | "fraction" | None (the rest of training)
    repeat: int = 1
    handoffs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Built:
    """What building gives: the term modules, the hook points per tap, the shared lets."""

    terms: nn.ModuleDict
    points: dict[ir.Tap, list[HookPoint]]
    lets: dict[str, LetNode]
    predictions: nn.ModuleDict  # `predict s = ...`: role -> its deployed output (with models)


def build(method: ir.Method, binding: Binding, report: Reporter) -> Built:
    """Every term's module on ``binding``."""
    builder = TermBuilder(method, binding, report)
    terms = nn.ModuleDict()
    for term in method.terms:
        module = builder.term(term)
        if module is not None:
            terms[term.name] = module
    predictions = nn.ModuleDict()
    if not binding.functional:  # functional mode deploys nothing
        for who, value in method.predictions.items():
            predictions[who] = builder.node(value, ("predict", who, "value"), {})
    return Built(terms, builder.points, builder.lets, predictions)


def constant_weights(method: ir.Method) -> dict[str, float]:
    """The weights that never change: numbers, and 1 for a weight the term computes itself."""
    out: dict[str, float] = {}
    for term in method.terms:
        w = term.weight
        if not types.is_static(w, method):
            out[term.name] = 1.0  # computed from the batch by the term itself
        elif not uses_progress(w, method.params):
            out[term.name] = float(evaluate(w, method.params))  # type: ignore[arg-type]
    return out


def stage_plans(method: ir.Method) -> list[StagePlan]:
    """Each stage's duration, repetitions and hand-offs, evaluated."""
    out = []
    for stage in method.effective_stages():
        p = method.params
        duration = float(evaluate(stage.duration, p)) if stage.duration else None  # type: ignore[arg-type]
        repeat = int(evaluate(stage.repeat, p)) if stage.repeat else 1  # type: ignore[arg-type]
        out.append(StagePlan(stage.name, duration, stage.unit, repeat, stage.handoffs))
    return out


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


class TermBuilder(Visitor[Node]):
    """Builds the term modules of a method on a :class:`~kdspec.compiler.bind.Binding`.

    Resolving a tap fills :attr:`points` (the hook points it reads on its role's model); a
    ``let`` is built once into :attr:`lets` and shared by every term that reads it. Problems
    go to ``report`` at their spec paths.
    """

    def __init__(self, method: ir.Method, binding: Binding, report: Reporter) -> None:
        self.m = method
        self.binding = binding
        self.diag = report
        self.points: dict[ir.Tap, list[HookPoint]] = {}
        self.lets: dict[str, LetNode] = {}
        self.holes: dict[str, types.VType] = {}  # types of the stand-ins being built
        # A def's arguments computed once however often its body reads them (`_shared_args`).
        self.shared: dict[str, ir.Expr] = {}
        self.shared_nodes: dict[str, LetNode] = {}

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
        if self.binding.functional or tap in self.points:
            return
        role = self.m.role(tap.role)
        if role is not None and role.mode == "virtual":
            return
        if tap.role not in self.binding.taps:
            return
        try:
            self.points[tap] = resolve_tap(
                tap, self.binding.taps[tap.role], self.binding.roles[tap.role]
            )
        except TapError as exc:
            self.diag(
                exc.code,
                f"`{types.tap_text(tap)}`: {exc.message}",
                path,
                f"on the model of `{tap.role}`",
                help=exc.help,
            )
            self.points[tap] = []

    def length(self, tap: ir.Tap) -> int:
        if self.binding.functional:
            v = self.binding.given.get(types.tap_text(tap))
            return len(v) if isinstance(v, list | tuple) else 1
        return len(self.points.get(tap, [])) or 1

    def node(self, e: ir.Expr, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]) -> Node:
        """The module computing ``e`` (``indices``: which layers of a range tap pair up): a
        constant for what is known before training, else the ``visit_`` rule of its kind."""
        if not isinstance(e, ir.Tap | ir.LetRef | ir.ArgRef) and types.is_static(e, self.m):
            return ConstNode(self.value(e))
        return self.visit(e, path, indices)

    def visit_LetRef(
        self, e: ir.LetRef, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        """A `let`: built once, the same module wherever it is read."""
        if e.name not in self.lets:
            let = self.m.let(e.name)
            assert let is not None  # the passes report unknown names
            self.lets[e.name] = LetNode(self.node(let.value, path, indices))
        return self.lets[e.name]

    def visit_ArgRef(
        self, e: ir.ArgRef, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        """A stand-in: the value a pipeline step or an expanded `def` is applied to."""
        if e.name in self.shared:  # a def's argument: built once, at its first read
            if e.name not in self.shared_nodes:
                self.shared_nodes[e.name] = LetNode(self.node(self.shared[e.name], path, indices))
            return self.shared_nodes[e.name]
        return HoleNode() if e.name == HOLE else ArgNode(e.name)

    def visit_BinOp(
        self, e: ir.BinOp, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        return self.primitive(e.op, [e.left, e.right], {}, path, indices)

    def visit_Neg(
        self, e: ir.Neg, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        return self.primitive("neg", [e.operand], {}, path, indices)

    def visit_Apply(
        self, e: ir.Apply, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        """``t.classifier(x)``: the module of the role's model, and the input shape it takes
        (its owner, the Distiller, is set when the Distiller is made)."""
        inputs = [self.node(a, path, indices) for a in e.args]
        text = module_text(e)
        info = self.binding.taps.get(e.role)
        module: str | None = None
        if self.binding.functional:
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
                module = resolve_tap(tap, info, self.binding.roles[e.role])[0].path
            except TapError as exc:
                self.diag(exc.code, f"`{text}`: {exc.message}", path, help=exc.help)
        call = info.first_call(module) if info is not None and module is not None else None
        in_shape = call.in_shape if call else None
        return ApplyNode(None, e.role, module or "", inputs, in_shape, text, path)

    def generic_visit(self, node: object, *args: object, **kwargs: object) -> Node:
        raise ValueError(f"`{type(node).__name__}` cannot be evaluated on tensors")

    def visit_Tap(
        self, e: ir.Tap, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        """A tap: a virtual role's made-up output, an ensemble's combination, or hook points."""
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

    def visit_Call(
        self, e: ir.Call, path: tuple[object, ...], indices: dict[ir.Tap, list[int]]
    ) -> Node:
        """A call: a `def` expanded, a typed primitive, an adapter, a combination, a transform."""
        fdef = self.m.function(e.func)
        if fdef is not None:
            return self.node(expand(self.shared_args(e), fdef), path, indices)
        if e.func == "choose" and len(e.args) == 3:
            chosen = types.choose_branch(e, self.m)
            if chosen is None:
                raise ValueError("the condition of `choose` is not known before training")
            return self.node(chosen, path, indices)
        fn = FUNCTIONS[e.func]
        args = list(e.args)
        if e.func == "normalize" and args:
            args[0] = self.scale_free(args[0])
        if _is_primitive_call(e):
            return self.primitive(e.func, args, self.kwargs(e), path, indices, fn)
        kwargs = self.kwargs(e)
        if fn.category == "adapter":
            child = self.node(e.args[0], path, indices)
            if e.func == "identity":
                return child
            more = [self.node(a, path, indices) for a in e.args[1:]]
            return AdapterNode(e.func, child, kwargs, term=str(path[1]), extra=more)
        inputs = [self.node(a, path, indices) for a in args]
        if fn.category == "combine":
            weights = kwargs.get("weights")
            kinds = {types.expr_kind(a, self.m) for a in e.args}
            return CombineNode(inputs, weights, distribution=kinds == {"distribution"})
        extra: dict[str, Any] | None = None
        if e.func == "margin_relu":
            extra = {"margins": self.margins(e.args[0], path)}
        node = TransformNode(e.func, inputs, kwargs, extra)
        if e.args:
            node.in_axes = types.value_type(e.args[0], self.m, holes=self.holes).axes
        return node

    def shared_args(self, e: ir.Call) -> ir.Call:
        """``e`` with its computed arguments as stand-ins built once: a def's body may read an
        argument several times (`mask(conv1x1(x))` reads `x` twice), and it is one value, one
        adapter, one random draw. Arguments that read a loss's sides or a pipeline's input
        stay as written (they change from one paired layer to the next)."""
        args: list[ir.Expr] = []
        for a in e.args:
            if (
                isinstance(a, ir.Tap | ir.ArgRef | ir.LetRef)
                or types.is_static(a, self.m)
                or any(ir.find_all(a, ir.ArgRef))
            ):
                args.append(a)
                continue
            name = f"$arg{len(self.shared)}"
            self.holes[name] = types.value_type(a, self.m, holes=self.holes)
            self.shared[name] = a
            args.append(ir.ArgRef(name=name))
        return e.model_copy(update={"args": tuple(args)})

    def scale_free(self, e: ir.Expr) -> ir.Expr:
        """``e`` without a positive factor, for ``normalize``: ``normalize(c x) = normalize(x)``.

        Equal values, but the zero rows `normalize` clamps (a dead channel of a Gram matrix,
        ``relation(x, over=channel) / HW``) keep the gradient of the unscaled value instead of
        ``1 / c`` of it. Factors are numbers > 0 known before training and sizes (``B``, ``HW``).
        """
        while True:  # one positive factor dropped per turn
            body = e
            if isinstance(e, ir.Call) and (fdef := self.m.function(e.func)) is not None:
                body = expand(e, fdef)
            if not isinstance(body, ir.BinOp):
                return e
            if body.op == "/" and self.positive(body.right):
                e = body.left
            elif body.op == "*" and self.positive(body.left):
                e = body.right
            elif body.op == "*" and self.positive(body.right):
                e = body.left
            else:
                return e  # nothing to drop: the value as written

    def positive(self, e: ir.Expr) -> bool:
        """A number > 0 known before training, or a size (``B``, ``HW``, ``size(...)``)."""
        factors = [e]  # products and quotients of such factors are such factors
        while factors:
            f = factors.pop()
            if isinstance(f, ir.BinOp) and f.op in ("*", "/"):
                factors += [f.left, f.right]
            elif not (isinstance(f, ir.Call) and f.func == "size") and not self._positive_number(f):
                return False
        return True

    def _positive_number(self, e: ir.Expr) -> bool:
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
            if self.binding.functional or tap.role not in self.binding.taps:
                continue
            info = self.binding.taps[tap.role]
            for point in self.points.get(tap) or resolve_tap(
                tap, info, self.binding.roles[tap.role]
            ):
                bn_path = info.preceding_batchnorm(point.path)
                if bn_path is None:
                    self.diag("KD402", "no batch norm before the tap, so no OFD margin", path)
                    continue
                out.append(
                    TRANSFORMS["ofd_margin"](self.binding.roles[tap.role].get_submodule(bn_path))
                )
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
                    self.unscale_last(steps, last, term, side)
                self.holes[HOLE] = current
                steps.append(self.node(body, ("term", term, side), {}))
                last = (body, current)
                current = types.value_type(body, self.m, holes=self.holes)
                continue
            if call.func == "normalize" and last is not None:
                self.unscale_last(steps, last, term, side)
            before, current = current, types.knowledge_type(current, (call,), self.m)
            fn = FUNCTIONS[call.func]
            if fn.category == "adapter":
                steps.append(AdapterNode(call.func, HoleNode(), self.kwargs(call), term=term))
            else:
                step = TransformNode(call.func, [HoleNode()], self.kwargs(call))
                step.in_axes = before.axes
                steps.append(step)
            last = None
        return PipelineNode(node, steps)

    def unscale_last(
        self, steps: list[Node], last: tuple[ir.Expr, types.VType], term: str, side: str
    ) -> None:
        """Rebuild the last step without its positive factor (a `normalize` follows)."""
        unscaled = self.scale_free(last[0])
        if unscaled is not last[0]:
            self.holes[HOLE] = last[1]
            steps[-1] = self.node(unscaled, ("term", term, side), {})

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
        subset = self.subset(term)
        kwargs = self.kwargs(term.loss)
        module = TermModule(
            term, source, target, term.loss.func, kwargs, to_probs, subset, weight_node=weight
        )
        module.token_axes = self.token_axes(term)
        return module

    def token_axes(self, term: ir.Term) -> tuple[str, ...] | None:
        """The student side's axes where they are token values (batch, token, ...), else None:
        a built-in loss then sees the rows of the tokens the batch's mask keeps (on token data
        only: elsewhere there is no mask, and `tokens(x)` of a feature map keeps its rows)."""
        if not self.binding.token_data:
            return None
        raw = types.value_type(term.target, self.m)
        side = raw if term.kind != "transfer" else types.knowledge_type(raw, term.knowledge, self.m)
        if side.axes is not None and side.axes[:2] == ("batch", "token"):
            return side.axes
        return None

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
        # A loss of the library on token values sees the rows of the kept tokens.
        library = (fn := FUNCTIONS.get(term.loss.func)) is not None and fn.category == "loss"
        token_axes = self.token_axes(term) if library else None
        if token_axes is not None:
            sides = {k: _as_rows(v) for k, v in sides.items()}
        self.holes = types.loss_holes(term.loss.func, sides)
        loss = self.node(expand(term.loss, fdef, implicit), ("term", term.name, "loss"), {})
        self.holes = {}
        module = TermModule(
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
        module.token_axes = token_axes
        return module


def _as_rows(t: types.VType) -> types.VType:
    """Token values (batch, token, ...) as the rows a loss sees: (batch, ...)."""
    if t.axes is not None and t.axes[:2] == ("batch", "token"):
        return types.VType(t.kind, ("batch", *t.axes[2:]))
    return t


def _is_primitive_call(e: ir.Call) -> bool:
    """A call compiled as a typed primitive (legacy transforms keep their own nodes)."""
    fn = FUNCTIONS.get(e.func)
    if fn is None:
        return False
    return fn.category == "primitive" or (
        (fn.category == "loss" and e.func in LOSSES)  # a loss's value inside an expression
        or (e.func in ("softmax", "log_softmax", "normalize", "mean") and "over" in e.kwargs)
    )


def _whole(v: Any) -> Any:
    """Whole numbers as ints: spec numbers evaluate to floats, sizes and counts must be ints."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_whole(x) for x in v]
    return v
