"""Static facts about IR expressions: the kind of knowledge they carry, the roles they read.

Pure functions over the IR and the vocabulary; the graph builder, the passes and the compiler
share them so that a kind is computed in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from kdspec.ir import models as ir
from kdspec.ir.evaluate import EvalError, evaluate
from kdspec.ir.printer import tap_text
from kdspec.ir.traverse import fold
from kdspec.vocabulary import FUNCTIONS, Fn
from kdspec.vocabulary import axes as axes_rules
from kdspec.vocabulary.axes import Axes, AxisError, tap_axes_for


def expr_kind(e: ir.Expr | None, method: ir.Method) -> str:
    """The kind of knowledge an expression yields (see :data:`kdspec.vocabulary.KINDS`).

    Follows lets and the first argument of calls that keep their input's kind, in a loop.
    """
    open_lets: set[str] = set()
    while True:
        if isinstance(e, ir.LetRef):
            let = method.let(e.name)
            if let is None or e.name in open_lets:
                return "features"
            open_lets.add(e.name)
            e = let.value
        elif isinstance(e, ir.Call) and _keeps_input_kind(e, method):
            e = e.args[0] if e.args else None
            if e is None:
                return "features"
        else:
            return _own_kind(e, method)


def _keeps_input_kind(e: ir.Call, method: ir.Method) -> bool:
    """A call whose kind is its first argument's (an unknown function, or one returning `same`)."""
    fn = FUNCTIONS.get(e.func)
    if fn is None:
        return method.function(e.func) is None
    return fn.category != "schedule" and fn.returns == "same"


def _own_kind(e: ir.Expr | None, method: ir.Method) -> str:
    """The kind of an expression that is neither a let nor a call keeping its input's kind."""
    if e is None:
        return "features"
    if isinstance(e, ir.Tap):
        if e.point == "logits":
            return "logits"
        if e.point == "embedding":
            return "embedding"
        return "features"
    if isinstance(e, ir.Apply):
        return "logits" if e.point == "classifier" else "features"
    if isinstance(e, ir.Call):
        fn = FUNCTIONS.get(e.func)
        if fn is None:  # a def: typed through its body
            return value_type(e, method).kind
        return "scalar" if fn.category == "schedule" else fn.returns
    if isinstance(e, ir.Num | ir.ParamRef):
        return "scalar"
    if isinstance(e, ir.BinOp | ir.Neg):
        return "scalar" if is_static(e, method) else value_type(e, method).kind
    return "features"


def apply_knowledge(
    kind: str, knowledge: tuple[ir.Call, ...], method: ir.Method | None = None
) -> str:
    """The kind after a transfer's knowledge pipeline is applied to a side."""
    for call in knowledge:
        fn = FUNCTIONS.get(call.func)
        if fn is None and method is not None and method.function(call.func) is not None:
            kind = knowledge_type(VType(kind, None), (call,), method).kind
        elif fn is not None and fn.returns != "same":
            kind = fn.returns
    return kind


def side_kind(term: ir.Term, side: str, method: ir.Method) -> str:
    """Kind of a term's ``source`` or ``target`` side after its knowledge pipeline."""
    e = term.source if side == "source" else term.target
    return apply_knowledge(expr_kind(e, method), term.knowledge, method)


def term_sides(term: ir.Term, method: ir.Method) -> list[tuple[str, ir.Expr | None, str]]:
    """A term's sides in order (``source`` first for transfers), each with its kind.

    A transfer's side kind includes its knowledge pipeline; a supervised term has one side,
    its ``target``, read as it is.
    """
    if term.kind == "supervise":
        return [("target", term.target, expr_kind(term.target, method))]
    return [
        (side, getattr(term, side), side_kind(term, side, method)) for side in ("source", "target")
    ]


def taps(
    e: ir.Expr | None, method: ir.Method, *, under_stopgrad: bool = False
) -> list[tuple[ir.Tap, bool]]:
    """Every tap an expression reads (through lets), with whether a ``stopgrad`` sits above it."""
    out: list[tuple[ir.Tap, bool]] = []
    for node in ir.walk(e, method, prune=_is_stopgrad if not under_stopgrad else None):
        if isinstance(node, ir.Tap):
            out.append((node, under_stopgrad))
        elif _is_stopgrad(node) and not under_stopgrad:
            out.extend((tap, True) for tap in node.find_all(ir.Tap, method))
    return out


def _is_stopgrad(e: ir.Expr) -> bool:
    return isinstance(e, ir.Call) and e.func == "stopgrad"


def has_unknown(e: ir.Expr | None, method: ir.Method) -> bool:
    """Whether an expression calls (through lets) a function the vocabulary lacks (KD203)."""
    return any(call.func not in FUNCTIONS for call in ir.find_all(e, ir.Call, method))


def term_has_unknown(term: ir.Term, method: ir.Method) -> bool:
    """Whether a term's sides, pipeline or loss call an unknown function: its kinds are unknown,
    so the type checks skip it rather than report consequences of that one error."""
    parts: tuple[ir.Expr | None, ...] = (term.source, term.target, *term.knowledge, term.loss)
    return any(has_unknown(p, method) for p in parts)


def expand_role(name: str, method: ir.Method) -> tuple[str, ...]:
    """A role name, or an ensemble's member roles."""
    ens = method.ensemble(name)
    return ens.members if ens else (name,)


def roles_read(e: ir.Expr | None, method: ir.Method) -> set[str]:
    """Every role an expression reads from."""
    return {r for tap, _ in taps(e, method) for r in expand_role(tap.role, method)}


def grad_roles(e: ir.Expr | None, method: ir.Method) -> set[str]:
    """Roles that receive gradient through an expression (taps not under ``stopgrad``)."""
    return {r for tap, stop in taps(e, method) if not stop for r in expand_role(tap.role, method)}


def applications(e: ir.Expr | None, method: ir.Method) -> list[ir.Apply]:
    """The role modules an expression applies (``t.classifier(x)``) outside ``stopgrad``."""
    return [n for n in ir.walk(e, method, prune=_is_stopgrad) if isinstance(n, ir.Apply)]


def uses_adapter(e: ir.Expr | None, method: ir.Method) -> list[str]:
    """Names of the learned functions (adapters) an expression applies (through lets)."""
    return [
        call.func
        for call in ir.find_all(e, ir.Call, method)
        if call.func != "identity"
        and (fn := FUNCTIONS.get(call.func)) is not None
        and fn.category == "adapter"
    ]


# ---------------------------------------------------------------------------------------------
# Value types: knowledge kind and axes, through every operation
# ---------------------------------------------------------------------------------------------

Report = Callable[[str, str, tuple[object, ...]], None]


@dataclass(frozen=True)
class VType:
    """The static type of a value: its knowledge kind and its axes (None: unknown)."""

    kind: str
    axes: Axes | None

    @property
    def scalar(self) -> bool:
        return self.axes == ()


SCALAR = VType("scalar", ())
UNKNOWN = VType("features", None)


def tap_axes(tap: ir.Tap) -> Axes:
    """The axes a tap reads: logits (batch, class), embedding (batch, channel), else features;
    on token data each with a token axis after the batch (:func:`axes_rules.token_data`)."""
    return tap_axes_for(tap.point)


def constant(e: ir.Expr, method: ir.Method) -> object:
    """The value of a constant argument (a number, a bare word, a list), or None."""
    try:
        return evaluate(e, method.params)
    except EvalError:
        return None


def loss_holes(func: str, sides: dict[str, VType]) -> dict[str, VType]:
    """The types of a loss's two sides (``$teacher``, ``$student``) inside its body.

    A loss of the library compares two sides of one shape, as its Python ancestors did: where
    their axes are named differently (logits against a linear map's channels) the student side
    is read with the teacher side's axes; sides of different shapes are KD403 at the dry run.
    """
    from kdspec.ir.functions import STUDENT_SIDE, TEACHER_SIDE

    # A side that is no tensor (an unknown role, reported where it is written) types nothing.
    source, target = (
        UNKNOWN if t.axes == () else t for t in (sides.get("source", UNKNOWN), sides["target"])
    )
    fn = FUNCTIONS.get(func)
    if (
        fn is not None
        and fn.category == "loss"
        and source.axes is not None
        and target.axes is not None
        and source.axes != target.axes
    ):
        target = VType(target.kind, source.axes)
    return {TEACHER_SIDE: source, STUDENT_SIDE: target}


def choose_branch(e: ir.Call, method: ir.Method) -> ir.Expr | None:
    """The argument ``choose(cond, a, b)`` stands for, or None if ``cond`` is not static."""
    if e.args[0].find(ir.Call) is not None:  # a size (`B`) or a schedule: known too late
        return None
    cond = constant(e.args[0], method) if is_static(e.args[0], method) else None
    if not isinstance(cond, int | float):
        return None
    return e.args[1] if cond else e.args[2]


def _relation_kind(kw: dict[str, object]) -> str:
    over = kw.get("over")
    if over == "channel":
        return "gram"
    return "distance" if kw.get("kernel") in ("distance", "sqdistance") else "similarity"


def context_key(e: ir.Expr, method: ir.Method) -> str:
    """What ``e`` reads of its method beyond its own text: the parameters and the `let`s it
    refers to (directly or through those lets), as text. With ``repr(e)`` it keys what is
    computed from ``e`` in any method (a def's body typed for a call of it)."""
    params, lets = set(), set()
    for n in ir.walk(e, method):
        if isinstance(n, ir.ParamRef):
            params.add(n.name)
        elif isinstance(n, ir.LetRef):
            lets.add(n.name)
    return repr(
        (
            [(p, method.params.get(p)) for p in sorted(params)],
            [(name, method.let(name)) for name in sorted(lets)],
        )
    )


def is_static(e: ir.Expr | None, method: ir.Method) -> bool:
    """A number known before training (constants, parameters, schedules): no tensor, no size."""
    if e is None:
        return True
    calls_are_leaves = ir.walk(e, prune=lambda n: isinstance(n, ir.Call))
    return all(_static_node(n) for n in calls_are_leaves)


def _static_node(n: object) -> bool:
    if isinstance(n, ir.Num | ir.Str | ir.ParamRef | ir.BinOp | ir.Neg | ir.ListE):
        return True
    if isinstance(n, ir.Call):
        fn = FUNCTIONS.get(n.func)
        return fn is not None and fn.category == "schedule"
    return False


def value_type(
    e: ir.Expr | None,
    method: ir.Method,
    report: Report | None = None,
    path: tuple[object, ...] = (),
    holes: dict[str, VType] | None = None,
) -> VType:
    """Kind and axes of an expression; axis errors go to ``report(code, message, path)``.

    ``holes`` gives the types of stand-ins (a pipeline step's input, a loss's two sides). A
    ``def`` call is typed through its body; its errors are reported at the call. Typed
    bottom-up on an explicit stack (:func:`kdspec.ir.traverse.fold`), errors in the order a
    recursive checker would find them.
    """
    typing = _Typing(method, report, holes or {})
    return fold(_Typed(e, path, True), typing.parts, typing.combine)


@dataclass(frozen=True)
class _Typed:
    """An expression to type, where its errors go (``path``), and whether they are reported
    (a let's body is typed, and checked, where it is defined)."""

    expr: ir.Expr | None
    path: tuple[object, ...]
    reported: bool
    open_lets: frozenset[str] = frozenset()  # lets being typed on the way down: a cycle ends


@dataclass(frozen=True)
class _Typing:
    """One call of :func:`value_type`: the sub-expressions each type needs, and the type."""

    method: ir.Method
    report: Report | None
    holes: dict[str, VType]

    def fail(self, item: _Typed) -> Callable[[str, str, tuple[object, ...]], None]:
        def fail(code: str, message: str, where: tuple[object, ...]) -> None:
            if self.report is not None and item.reported:
                self.report(code, message, where)

        return fail

    def parts(self, item: _Typed) -> list[_Typed]:
        found = self._parts(item)
        if not item.open_lets:
            return found
        return [replace(part, open_lets=part.open_lets | item.open_lets) for part in found]

    def _parts(self, item: _Typed) -> list[_Typed]:
        e, path, reported = item.expr, item.path, item.reported
        if isinstance(e, ir.LetRef):
            let = self.method.let(e.name)
            if let is None or e.name in item.open_lets:  # a let defined by itself
                return []
            return [_Typed(let.value, (), False, frozenset({e.name}))]
        if isinstance(e, ir.Neg):
            return [_Typed(e.operand, (*path, "operand"), reported)]
        if isinstance(e, ir.BinOp):
            return [
                _Typed(e.left, (*path, "left"), reported),
                _Typed(e.right, (*path, "right"), reported),
            ]
        if not isinstance(e, ir.Call | ir.Apply):
            return []
        if isinstance(e, ir.Call):
            fdef = self.method.function(e.func) if e.func not in FUNCTIONS else None
            if fdef is not None:
                from kdspec.ir.functions import expand

                return [_Typed(expand(e, fdef), path, reported)]
            if e.func == "choose" and len(e.args) == 3:
                chosen = choose_branch(e, self.method)
                if chosen is None:
                    return []  # KD216 in combine
                where = (*path, "args", 1 if chosen is e.args[1] else 2)
                return [_Typed(chosen, where, reported)]
            if e.func not in FUNCTIONS:
                return []
        return [_Typed(a, (*path, "args", i), reported) for i, a in enumerate(e.args)]

    def combine(self, item: _Typed, ins: list[VType]) -> VType:
        e, path = item.expr, item.path
        if e is None:
            return UNKNOWN
        if isinstance(e, ir.ParamRef) and e.name not in self.method.params:
            return UNKNOWN  # an unknown name (KD202 says so): nothing to check against it
        if isinstance(e, ir.Num | ir.ParamRef | ir.Str | ir.ListE):
            return SCALAR
        if isinstance(e, ir.Tap):
            return VType(expr_kind(e, self.method), tap_axes(e))
        if isinstance(e, ir.ArgRef):
            return self.holes.get(e.name, UNKNOWN)
        if isinstance(e, ir.LetRef):
            return ins[0] if ins else UNKNOWN
        if isinstance(e, ir.Neg):
            return VType("scalar" if ins[0].scalar else "features", ins[0].axes)
        if isinstance(e, ir.BinOp):
            return _binop_type(e, ins[0], ins[1], self.fail(item), path)
        if isinstance(e, ir.Apply):
            return apply_type(e, ins, self.fail(item), path)
        if not isinstance(e, ir.Call):
            return UNKNOWN
        if e.func not in FUNCTIONS and self.method.function(e.func) is not None:
            return ins[0]  # a user's def, typed through its body
        if e.func == "choose" and len(e.args) == 3:
            if ins:
                return ins[0]  # the branch it stands for
            message = "the condition of `if` (`choose`) is not known before training"
            self.fail(item)("KD216", message, (*path, "args", 0))
            return UNKNOWN
        fn = FUNCTIONS.get(e.func)
        if fn is None:
            return UNKNOWN
        return call_type(e, fn, ins, self.method, self.fail(item), path)


def _binop_type(
    e: ir.BinOp,
    a: VType,
    b: VType,
    fail: Callable[[str, str, tuple[object, ...]], None],
    path: tuple[object, ...],
) -> VType:
    if a.axes is None or b.axes is None:
        return UNKNOWN
    try:
        out = axes_rules.broadcast(a.axes, b.axes)
    except AxisError as exc:
        fail(exc.code, f"`{e.op}`: {exc.message}", path)
        return UNKNOWN
    return VType("scalar" if out == () else "features", out)


def apply_type(
    e: ir.Apply,
    ins: list[VType],
    fail: Callable[[str, str, tuple[object, ...]], None],
    path: tuple[object, ...],
) -> VType:
    """The type of a role's module applied to values: a classifier maps the channel axis of
    its input to classes (KD313 without one); another module's output axes are unknown."""
    if e.point != "classifier":
        return UNKNOWN
    axes = ins[0].axes if ins else None
    if axes is None:
        return VType("logits", None)
    if "channel" not in axes:
        fail(
            "KD313",
            f"`{e.role}.classifier` maps the channels of a feature vector to classes, and "
            f"this value has no channel axis: its axes are ({', '.join(axes)})",
            (*path, "args", 0),
        )
        return VType("logits", None)
    # `space` may be empty (a pooled map): a map the classifier cannot take is KD403 when
    # compiled, where its input's shape is known.
    return VType("logits", tuple("class" if a == "channel" else a for a in axes if a != "space"))


def call_type(
    e: ir.Call,
    fn: Fn,
    ins: list[VType],
    method: ir.Method,
    fail: Callable[[str, str, tuple[object, ...]], None],
    path: tuple[object, ...],
) -> VType:
    """The type of a built-in call on inputs of known types."""
    kw = {k: constant(v, method) for k, v in e.kwargs.items()}
    if fn.category == "schedule":
        return SCALAR
    if fn.category == "loss":
        return SCALAR
    if fn.inputs > 0 and len(ins) < fn.inputs - fn.optional_inputs:
        return UNKNOWN  # a missing input (KD204, reported by lowering)
    if e.func == "mean" and kw.get("over") is None:  # the combine: mean of several values
        kinds = {t.kind for t in ins}
        return VType(kinds.pop() if len(kinds) == 1 else "features", ins[0].axes if ins else None)
    try:
        rule = fn.axes
        if e.func == "mean":  # `mean(x, over=...)`: a reduction, or means of groups
            rule = "group" if kw.get("groups") is not None else "reduce"
        axes = axes_rules.infer(e.func, rule, [t.axes for t in ins], kw)
    except AxisError as exc:
        if not exc.word:  # a word that is no axis is reported by lowering, where it is written
            where = (*path, "kwargs", exc.param) if exc.param in e.kwargs else path
            fail(exc.code, exc.message, where)
        return UNKNOWN
    inner = ins[0].kind if ins else "features"
    if e.func == "relation":
        kind = _relation_kind(kw)
    elif e.func == "mean":  # along axes: a distribution while its own (last) axis stays
        kind = "distribution" if ins and _keeps_own_axis(ins[0], kw) else "features"
    elif fn.returns == "same":
        kind = inner
    else:
        kind = fn.returns
    if axes == () and kind == "features":
        kind = "scalar"
    return VType(kind, axes)


def _keeps_own_axis(t: VType, kw: dict[str, object]) -> bool:
    """Whether `mean(p, over=...)` of a distribution leaves the axis it is a distribution along
    (its last): averaging heads keeps one, averaging its classes does not."""
    if t.kind != "distribution" or not t.axes or kw.get("over") is None:
        return False
    try:
        return t.axes[-1] not in axes_rules.over_axes(kw["over"], of=t.axes)
    except AxisError:
        return False


def knowledge_type(
    start: VType,
    knowledge: tuple[ir.Call, ...],
    method: ir.Method,
    report: Report | None = None,
    path: tuple[object, ...] = (),
) -> VType:
    """The type of a side after a transfer's knowledge pipeline."""
    from kdspec.ir.functions import HOLE, expand

    current = start
    for i, call in enumerate(knowledge):
        where = (*path, "knowledge", i)
        fdef = method.function(call.func) if call.func not in FUNCTIONS else None
        if fdef is not None:
            body = expand(call, fdef, (ir.ArgRef(name=HOLE),))
            current = value_type(body, method, report, where, {HOLE: current})
            continue
        fn = FUNCTIONS.get(call.func)
        if fn is None:
            return UNKNOWN
        ins = [current] + [
            value_type(a, method, report, (*where, "args", j)) for j, a in enumerate(call.args)
        ]
        current = call_type(call, fn, ins, method, report or (lambda *a: None), where)
    return current


__all__ = [
    "applications",
    "apply_knowledge",
    "expand_role",
    "expr_kind",
    "grad_roles",
    "is_static",
    "knowledge_type",
    "roles_read",
    "side_kind",
    "tap_text",
    "taps",
    "term_sides",
    "uses_adapter",
    "value_type",
]
