"""KD205/KD207: values inside their ranges (T > 0, weights >= 0, durations > 0)."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.ir import models as ir
from kdspec.ir.evaluate import EvalError, NumericError, evaluate
from kdspec.passes.context import PassContext
from kdspec.vocabulary import FUNCTIONS

_RULES = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonneg": (lambda v: v >= 0, "must be >= 0"),
    "unit": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "int": (lambda v: float(v).is_integer(), "must be a whole number"),
    "posint": (lambda v: float(v).is_integer() and v > 0, "must be a whole number > 0"),
}


def _check_call(ctx: PassContext, call: ir.Call, path: tuple[object, ...]) -> list[Diagnostic]:
    fn = FUNCTIONS.get(call.func)
    out: list[Diagnostic] = []
    if fn is None:
        return out
    for name, value in call.kwargs.items():
        rule = fn.params.get(name)
        if rule is None or rule.check is None:
            continue
        try:
            v = evaluate(value, ctx.method.params)
        except NumericError as exc:
            out.append(
                ctx.diag("KD205", f"`{call.func}`'s `{name}`: {exc}", path, f"`{name}` here")
            )
            continue
        except EvalError:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            out.append(
                ctx.diag(
                    "KD205",
                    f"`{call.func}`'s `{name}` must be a number, got `{v}`",
                    path,
                    f"`{name}` here",
                )
            )
            continue
        ok, text = _RULES[rule.check]
        if not ok(v):
            out.append(
                ctx.diag(
                    "KD205",
                    f"`{call.func}`'s `{name}` {text}, got {v:g}",
                    path,
                    f"`{name}` = {v:g}",
                )
            )
    return out


def check_values(ctx: PassContext) -> list[Diagnostic]:
    """Every constant argument and weight within its documented range."""
    m = ctx.method
    out: list[Diagnostic] = []
    for term in m.terms:
        key = ("term", term.name)
        for i, k in enumerate(term.knowledge):
            out.extend(_check_call(ctx, k, (*key, "knowledge", i)))
        for side in ("source", "target"):
            for call in ir.find_all(getattr(term, side), ir.Call):
                out.extend(_check_call(ctx, call, (*key, side)))
        out.extend(_check_call(ctx, term.loss, (*key, "loss")))
        try:
            w = evaluate(term.weight, m.params)
        except EvalError as exc:
            out.append(
                ctx.diag(
                    "KD205",
                    f"the weight of `{term.name}` is not a number: {exc}",
                    (*key, "weight"),
                    "not a number",
                )
            )
            continue
        if isinstance(w, int | float) and w < 0:
            out.append(
                ctx.diag(
                    "KD205",
                    f"the weight of `{term.name}` must be >= 0, got {w:g}",
                    (*key, "weight"),
                    f"= {w:g}",
                    help="a negative weight would maximise the loss",
                )
            )
    for stage in m.stages:
        key = ("stage", stage.name)
        for what, e in (("duration", stage.duration), ("repeat", stage.repeat)):
            if e is None:
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
