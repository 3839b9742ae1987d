"""KD205/KD207: values inside their ranges (T > 0, weights >= 0, durations > 0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.ir import traverse
from kdspec.ir.evaluate import EvalError, NumericError, Progress, evaluate, uses_progress
from kdspec.ir.functions import expand
from kdspec.ir.lower import did_you_mean
from kdspec.ir.printer import expr_text
from kdspec.lru import Lru
from kdspec.passes.context import PassContext
from kdspec.vocabulary import FUNCTIONS, Param
from kdspec.vocabulary.axes import AXES, positional

MIN_TEMPERATURE = 1e-3  # below this, logits / T overflow float32 for ordinary logits
# Sizes whose cost grows fast: ONE's branches are whole sub-networks (thousands take minutes to
# build); the same caps hold at compile time (kdspec.ops.components).
SIZE_CAPS = {("branches", "n"): 256, ("branches", "width"): 1 << 14}
MAX_SIZE = 10_000_000  # sizes (dims, heads, negatives): larger is a typo that would exhaust memory

_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonneg": (lambda v: v >= 0, "must be >= 0"),
    "unit": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "int": (lambda v: float(v).is_integer(), "must be a whole number"),
    "quarter_turns": (lambda v: v in (1, 2, 3, 4), "must be 1, 2, 3 or 4"),
    "posint": (
        lambda v: float(v).is_integer() and 0 < v <= MAX_SIZE,
        f"must be a whole number > 0 and at most {MAX_SIZE:,}",
    ),
}


# Where a schedule is evaluated at every step; anywhere else a value is fixed when the method is
# compiled (adapter and learned-loss sizes, stage lengths, data views), so it must be constant.
_RUNTIME_CATEGORIES = frozenset({"transform", "primitive", "loss", "combine", "role_init"})
_START, _END = Progress(0.0, 1.0), Progress(1.0, 1.0)


def over_training(e: ir.Expr, params: dict[str, ir.Expr]) -> list[object]:
    """A value at the start and at the end of a stage (once if it has no schedule).

    Schedules are monotone over a stage, so their extremes are at its ends.
    """
    if not uses_progress(e, params):
        return [evaluate(e, params)]
    return [evaluate(e, params, _START), evaluate(e, params, _END)]


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _shown(v: object) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_shown(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _unresolved(e: ir.Expr, params: dict[str, ir.Expr]) -> bool:
    """Whether ``e`` names an unknown parameter (lowering reported it; no second error)."""
    return any(isinstance(n, ir.ParamRef) and n.name not in params for n in ir.walk(e))


def _wanted(rule: Param) -> str:
    """What a parameter takes, in words (the vocabulary's default says which kind)."""
    if rule.choices is AXES:
        return "an axis or a list of axes"
    if rule.choices:
        return "one of " + ", ".join(f"`{c}`" for c in rule.choices)
    if isinstance(rule.default, str):
        return "a word"
    if rule.check is not None or isinstance(rule.default, int | float):
        return "a number"
    return "a number or a list of numbers"


def _type_error(v: object, rule: Param) -> str | None:
    """None if ``v`` fits the parameter, else a help text ("" when there is none to give)."""
    if rule.choices is AXES and positional(v):  # torch dimensions: `lp(dim=1)` in the prelude
        return None
    if rule.choices is AXES and isinstance(v, list) and v:  # `over=[batch, batch2]`
        bad = [x for x in v if not isinstance(x, str) or x not in AXES]
        return None if not bad else (did_you_mean(str(bad[0]), AXES) or "")
    if rule.choices or isinstance(rule.default, str):
        if not isinstance(v, str):
            return ""
        if rule.choices and v not in rule.choices:
            return did_you_mean(v, rule.choices) or ""
        return None
    if _is_number(v):
        return None
    if rule.check is None and not isinstance(rule.default, int | float):
        if isinstance(v, list) and v and all(_is_number(x) for x in v):
            return None
    return ""


def _check_call(ctx: PassContext, call: ir.Call, path: tuple[object, ...]) -> list[Diagnostic]:
    fn = FUNCTIONS.get(call.func)
    out: list[Diagnostic] = []
    if fn is None:
        return out
    params = ctx.method.params
    for name, value in call.kwargs.items():
        rule = fn.params.get(name)
        if rule is None:
            continue
        if uses_progress(value, params) and (fn.category not in _RUNTIME_CATEGORIES or fn.learned):
            out.append(
                ctx.diag(
                    "KD205",
                    f"`{call.func}`'s `{name}` is fixed when the method is compiled, so it "
                    "cannot follow a schedule",
                    path,
                    f"`{name}` changes during training",
                    help="schedules work in weights and in the parameters of knowledge "
                    "transforms, losses and ensembles; give a number here",
                )
            )
            continue
        if rule.choices is AXES and not any(isinstance(n, ir.ParamRef) for n in ir.walk(value)):
            continue  # an axis written here: lowering checks it where it is written (KD313)
        if fn.category == "combine" and name == "weights":
            out.extend(_check_weights(ctx, value, len(call.args), path))
            continue
        try:
            values = over_training(value, params)
        except NumericError as exc:
            out.append(
                ctx.diag("KD205", f"`{call.func}`'s `{name}`: {exc}", path, f"`{name}` here")
            )
            continue
        except EvalError:
            if _unresolved(value, params):
                continue  # an unknown name: KD202 says so already
            out.append(
                ctx.diag(
                    "KD205",
                    f"`{call.func}`'s `{name}` must be {_wanted(rule)}, got `{expr_text(value)}`",
                    path,
                    f"`{name}` here",
                )
            )
            continue
        for v in values:
            bad = _type_error(v, rule)
            if bad is not None:
                out.append(
                    ctx.diag(
                        "KD205",
                        f"`{call.func}`'s `{name}` must be {_wanted(rule)}, got `{_shown(v)}`",
                        path,
                        f"`{name}` here",
                        help=bad or None,
                    )
                )
                break
            if rule.check is None:
                continue
            ok, text = _RULES[rule.check]
            if not ok(v):
                out.append(
                    ctx.diag(
                        "KD205",
                        f"`{call.func}`'s `{name}` {text}, got {v:g}"
                        + (" during training" if len(values) > 1 else ""),
                        path,
                        f"`{name}` = {v:g}",
                    )
                )
                break
            if not isinstance(v, int | float):
                continue
            cap = SIZE_CAPS.get((call.func, name))
            if cap is not None and v > cap:
                out.append(
                    ctx.diag(
                        "KD205",
                        f"`{call.func}`'s `{name}` is at most {cap:,}, got {v:g}",
                        path,
                        f"`{name}` = {v:g}",
                    )
                )
                break
            if name == "T" and 0 < v < MIN_TEMPERATURE:
                out.append(
                    ctx.diag(
                        "KD205",
                        f"`{call.func}`'s temperature `T` = {v:g} is tiny: logits / T overflow, "
                        "the softened distribution is a one-hot argmax and the loss diverges",
                        path,
                        f"`T` = {v:g}",
                        severity=Severity.WARNING,
                        help="KD temperatures are between about 1 and 20 (0.05-0.2 for "
                        "contrastive losses)",
                    )
                )
                break
    return out


def _check_weights(
    ctx: PassContext, e: ir.Expr | None, members: int, path: tuple[object, ...]
) -> list[Diagnostic]:
    """Ensemble (or weighted mean) weights: one number >= 0 per member, not all zero."""
    if e is None:
        return []
    try:
        values = over_training(e, ctx.method.params)
    except EvalError as exc:
        if _unresolved(e, ctx.method.params):
            return []
        return [ctx.diag("KD205", f"the weights are not numbers: {exc}", path, "not numbers")]
    for v in values:
        if not isinstance(v, list) or not all(_is_number(x) for x in v):
            return [
                ctx.diag(
                    "KD205",
                    f"the weights must be a list of numbers, got `{_shown(v)}`",
                    path,
                    "not a list of numbers",
                    help="e.g. `weights=[0.7, 0.3]`, one weight per member",
                )
            ]
        if len(v) != members:
            return [
                ctx.diag("KD204", f"{len(v)} weights for {members} members", path, "one per member")
            ]
        if any(x < 0 for x in v):
            return [
                ctx.diag(
                    "KD205",
                    f"ensemble weights must be >= 0, got {_shown(v)}"
                    + (" during training" if len(values) > 1 else ""),
                    path,
                    "a negative weight",
                    help="the weights mix the members' outputs (normalised to sum 1); a "
                    "negative weight is no mixture",
                )
            ]
        if not sum(v) > 0:
            return [
                ctx.diag(
                    "KD205",
                    f"ensemble weights sum to zero ({_shown(v)})",
                    path,
                    "all zero",
                    help="give at least one member a positive weight",
                )
            ]
    return []


def _constant(
    ctx: PassContext, e: ir.Expr | None, path: tuple[object, ...], what: str
) -> list[Diagnostic]:
    if e is None or not uses_progress(e, ctx.method.params):
        return []
    return [
        ctx.diag(
            "KD205",
            f"{what} is fixed before training, so it cannot follow a schedule",
            path,
            "changes during training",
            help="schedules work in weights and in the parameters of knowledge transforms, "
            "losses and ensembles; give a number here",
        )
    ]


def _check_weight(ctx: PassContext, term: ir.Term) -> list[Diagnostic]:
    """A term's weight: a number >= 0 at every point of training."""
    path = ("term", term.name, "weight")
    try:
        values = over_training(term.weight, ctx.method.params)
    except EvalError as exc:
        if _unresolved(term.weight, ctx.method.params):
            return []  # an unknown name: KD202 says so already
        return [
            ctx.diag(
                "KD205",
                f"the weight of `{term.name}` is not a number: {exc}",
                path,
                "not a number",
            )
        ]
    for w in values:
        if not _is_number(w):
            return [
                ctx.diag(
                    "KD205",
                    f"the weight of `{term.name}` must be a number, got `{_shown(w)}`",
                    path,
                    "not a number",
                    help="a weight is a number, a parameter, a schedule or arithmetic on them, "
                    "e.g. `weight alpha * warmup(epochs=5)`",
                )
            ]
        if w < 0:  # type: ignore[operator]
            return [
                ctx.diag(
                    "KD205",
                    f"the weight of `{term.name}` must be >= 0, got {w:g}"
                    + (" during training" if len(values) > 1 else ""),
                    path,
                    f"= {w:g}",
                    help="a negative weight would maximise the loss",
                )
            ]
    return []


def _in_bodies(ctx: PassContext, e: ir.Expr | None, path: tuple[object, ...]) -> list[Diagnostic]:
    """The calls inside the ``def``s that ``e`` calls, with this call's arguments in place:
    `mmd(kernel="cubic")` written inside a `def` is as wrong as written in a term. Only the
    branch a `choose` takes is checked; arguments still naming a def's inputs are skipped."""
    out: list[Diagnostic] = []
    for call in ir.find_all(e, ir.Call):
        if ctx.method.function(call.func) is not None:
            for inner in _body_calls(ctx.method, call):
                out.extend(_check_call(ctx, inner, path))
    return out


# The prelude's defs recur in every spec (lowered once per process: the same objects), keyed by
# the def's identity; the def is kept with its entry, so its id is not another def's while it is.
_BODY_CALLS: Lru[tuple[str, int, str], tuple[ir.FunctionDef, list[ir.Call]]] = Lru(
    "def body calls", 1024
)


def _body_calls(m: ir.Method, call: ir.Call, depth: int = 0) -> list[ir.Call]:
    """The built-in calls a def call makes, nested defs expanded, `choose`s resolved."""
    fdef = m.function(call.func)
    if fdef is None or depth > 20:  # a def that calls itself is KD215
        return []
    key = (repr(call), id(fdef), types.context_key(call, m))
    hit = _BODY_CALLS.get(key)
    if hit is None or hit[0] is not fdef:
        found: list[ir.Call] = []
        for inner in _chosen_calls(m, expand(call, fdef)):
            if not any(isinstance(n, ir.ArgRef) for v in inner.kwargs.values() for n in ir.walk(v)):
                found.append(inner)  # checked against its vocabulary entry, if it has one
            if m.function(inner.func) is not None:
                found.extend(_body_calls(m, inner, depth + 1))
        hit = _BODY_CALLS.put(key, (fdef, found))
    return hit[1]


def _chosen_calls(m: ir.Method, e: ir.Expr) -> list[ir.Call]:
    """The calls of ``e`` outside the branches its `choose`s leave out (in walk order)."""
    out: list[ir.Call] = []
    stack: list[ir.Expr] = [e]
    while stack:
        node = stack.pop()
        if isinstance(node, ir.Call) and node.func == "choose" and len(node.args) == 3:
            chosen = types.choose_branch(node, m)
            if chosen is not None:
                stack.append(chosen)
                continue
        if isinstance(node, ir.Call):
            out.append(node)
        stack.extend(reversed(list(traverse.children(node))))  # type: ignore[arg-type]
    return out


def check_values(ctx: PassContext) -> list[Diagnostic]:
    """Every constant argument and weight within its documented range."""
    m = ctx.method
    out: list[Diagnostic] = []
    for term in m.terms:
        key = ("term", term.name)
        for e in term.expressions():
            out.extend(_in_bodies(ctx, e, (*key, "loss") if e is term.loss else key))
        for i, k in enumerate(term.knowledge):
            out.extend(_check_call(ctx, k, (*key, "knowledge", i)))
        for side in ("source", "target"):
            for call in ir.find_all(getattr(term, side), ir.Call):
                out.extend(_check_call(ctx, call, (*key, side)))
        out.extend(_check_call(ctx, term.loss, (*key, "loss")))
        if not types.is_static(term.weight, m):
            for call in ir.find_all(term.weight, ir.Call):
                out.extend(_check_call(ctx, call, (*key, "weight")))
            continue  # a weight computed from the batch (typed by check_axes)
        out.extend(_check_weight(ctx, term))
    for let in m.lets:
        for call in ir.find_all(let.value, ir.Call):
            out.extend(_check_call(ctx, call, ("let", let.name)))
    for ens in m.ensembles:
        path = ("ensemble", ens.name, "weights")
        out.extend(_check_weights(ctx, ens.weights, len(ens.members), path))
    for role in m.roles:
        if role.options and role.mode in FUNCTIONS:
            call = ir.Call(func=role.mode, kwargs=role.options)
            out.extend(_check_call(ctx, call, ("role", role.name)))
    for part in m.data:
        for e in (*part.args, *part.kwargs.values()):
            out.extend(_constant(ctx, e, ("data", part.name), f"{part.kind} `{part.name}`"))
        if part.func in FUNCTIONS:  # kinds and ranges of a view's or subset's arguments
            call = ir.Call(func=part.func, args=part.args, kwargs=part.kwargs)
            out.extend(_check_call(ctx, call, ("data", part.name)))
    for stage in m.stages:
        key = ("stage", stage.name)
        for what, bound in (("duration", stage.duration), ("repeat", stage.repeat)):
            if bound is None:
                continue
            e = bound
            if uses_progress(e, m.params):
                out.extend(_constant(ctx, e, (*key, what), f"the {what} of stage `{stage.name}`"))
                continue
            try:
                v = evaluate(e, m.params)
            except EvalError as exc:
                out.append(
                    ctx.diag(
                        "KD207",
                        f"stage `{stage.name}`: {what} is not a number: {exc}",
                        (*key, what),
                    )
                )
                continue
            if (
                not isinstance(v, int | float)
                or v <= 0
                or (what == "repeat" and not float(v).is_integer())
            ):
                need = "a whole number > 0" if what == "repeat" else "> 0"
                out.append(
                    ctx.diag(
                        "KD207",
                        f"stage `{stage.name}`: {what} must be {need}",
                        (*key, what),
                        f"= {v}",
                    )
                )
            elif what == "duration" and stage.unit == "fraction" and v > 1:
                out.append(
                    ctx.diag(
                        "KD207",
                        f"stage `{stage.name}` lasts more than 100% of training",
                        (*key, what),
                    )
                )
    return out
