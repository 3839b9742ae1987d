"""KD313/KD314/KD316/KD317/KD318: axes through every operation, losses and per-sample weights.

Every value's axes are inferred (:func:`kdspec.graph.types.value_type`); an operation along an
axis its input lacks is KD313, element-wise operands whose axes do not fit are KD314. A term's
value is the sum over the batch of loss times weight: a loss that gives one value per sample
needs a weight that says how to normalise it (KD316), a weight is a number or one value per
sample (KD317), and a loss gives a number or one value per sample (KD318).
"""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.graph.types import VType
from kdspec.ir import models as ir
from kdspec.ir.functions import STUDENT_SIDE, TEACHER_SIDE, expand
from kdspec.lru import Lru
from kdspec.passes.context import PassContext
from kdspec.vocabulary import FUNCTIONS
from kdspec.vocabulary.axes import axes_text, token_data

_LABELS = {"KD313": "wrong axis", "KD314": "axes do not fit", "KD216": "known only in training"}


def loss_type(
    term: ir.Term,
    sides: dict[str, VType],
    method: ir.Method,
    report: types.Report | None = None,
) -> VType | None:
    """The type of a term's loss value, for a loss written as a ``def`` (None: a built-in)."""
    fdef = method.function(term.loss.func)
    if fdef is None:
        return None
    if term.kind == "supervise":
        implicit: tuple[ir.Expr, ...] = (ir.ArgRef(name=STUDENT_SIDE),)
    else:
        implicit = (ir.ArgRef(name=TEACHER_SIDE), ir.ArgRef(name=STUDENT_SIDE))
    holes = types.loss_holes(term.loss.func, sides)
    # The prelude's losses recur in every spec (their defs lowered once per process: the same
    # objects): type each (call, def, sides, parameters) once and replay its diagnostics at
    # this term. The def is kept with its entry, so its id is not another def's while it is.
    key = (repr(term.loss), id(fdef), repr(holes), types.context_key(term.loss, method))
    hit = _LOSS_TYPES.get(key)
    if hit is None or hit[0] is not fdef:
        found: list[tuple[str, str, tuple[object, ...]]] = []
        body = expand(term.loss, fdef, implicit)
        vtype = types.value_type(body, method, lambda *d: found.append(d), (), holes)
        hit = _LOSS_TYPES.put(key, (fdef, vtype, found))
    _, vtype, found = hit
    for code, message, path in found:
        if report is not None:
            report(code, message, ("term", term.name, "loss", *path))
    return vtype


_LOSS_TYPES: Lru[
    tuple[str, int, str, str],
    tuple[ir.FunctionDef, VType, list[tuple[str, str, tuple[object, ...]]]],
] = Lru("loss types", 1024)


def check_axes(ctx: PassContext) -> list[Diagnostic]:
    """Type every expression's axes; check losses and weights per sample.

    The data a method will see are unknown here: taps are typed as read from images or vectors,
    then from tokens (a token axis after the batch), and what is wrong under both is reported,
    as written for images. What is wrong on tokens only is reported when the method is compiled
    on token data (:func:`kdspec.compiler.compile_spec` types it under the batch it gets).
    """
    with token_data(False):
        plain = axis_diagnostics(ctx)
    if not plain:  # only what is wrong under both is reported
        return []
    with token_data(True):
        tokens = {_key(d) for d in axis_diagnostics(ctx)}
    return [d for d in plain if _key(d) in tokens]


def _kind_rejected(term: ir.Term, m: ir.Method) -> bool:
    """A loss of the library whose vocabulary entry does not accept a side's kind."""
    fn = FUNCTIONS.get(term.loss.func)
    if fn is None or fn.category != "loss" or types.term_has_unknown(term, m):
        return False
    if term.kind == "supervise":
        return bool(fn.accepts) and types.expr_kind(term.target, m) not in fn.accepts
    teacher = fn.teacher_accepts if fn.teacher_accepts is not None else fn.accepts
    return (bool(fn.accepts) and types.side_kind(term, "target", m) not in fn.accepts) or (
        bool(teacher) and types.side_kind(term, "source", m) not in teacher
    )


def _key(d: Diagnostic) -> tuple[str, object]:
    # A loss or weight of the wrong axes is one error on either data, whichever code says it
    # (a per-sample loss on images is a per-token one on tokens).
    return ("loss" if d.code in ("KD316", "KD317", "KD318") else d.code, d.span)


def axis_diagnostics(ctx: PassContext) -> list[Diagnostic]:
    """The axis diagnostics of a method with taps typed as the current data say."""
    m = ctx.method
    out: list[Diagnostic] = []
    seen: set[tuple[str, str, tuple[object, ...]]] = set()

    def report(code: str, message: str, path: tuple[object, ...]) -> None:
        if (code, message, path) in seen:
            return
        seen.add((code, message, path))
        out.append(ctx.diag(code, message, path, _LABELS.get(code, "")))

    for let in m.lets:
        types.value_type(let.value, m, report, ("let", let.name))
    for role, value in m.predictions.items():
        predicted = types.value_type(value, m, report, ("predict", role, "value"))
        # (no axes: a placeholder for a value already reported, or a number: KD403 compiled)
        if predicted.axes and not {"batch", "class"} <= set(predicted.axes):
            out.append(
                ctx.diag(
                    "KD313",
                    f"`predict {role}` must give class scores per sample, with the axes "
                    f"(batch, class); this has {axes_text(predicted.axes)}",
                    ("predict", role, "value"),
                    "not class scores",
                    help="predict logits, e.g. `t.classifier(pool(x))`",
                )
            )
    for term in m.terms:
        key = ("term", term.name)
        sides: dict[str, VType] = {}
        if term.kind == "transfer":
            for side in ("source", "target"):
                raw = types.value_type(getattr(term, side), m, report, (*key, side))
                sides[side] = types.knowledge_type(raw, term.knowledge, m, report, key)
        else:
            sides["target"] = types.value_type(term.target, m, report, (*key, "target"))
        # A library loss given a kind it does not take is KD301 (check_types): its body is not
        # typed on that value too (one root cause, one diagnostic).
        loss = None if _kind_rejected(term, m) else loss_type(term, sides, m, report)
        per_sample_loss = loss is not None and loss.axes == ("batch",)
        if loss is not None and loss.axes not in (None, (), ("batch",)):
            out.append(
                ctx.diag(
                    "KD318",
                    f"the loss of `{term.name}` gives values along {axes_text(loss.axes)}; a "
                    "loss gives a number or one value per sample",
                    (*key, "loss"),
                    f"axes {axes_text(loss.axes)}",
                    help="reduce the other axes in the loss: `sum(..., over=class)`",
                )
            )
        static = types.is_static(term.weight, m)
        weight = (
            types.SCALAR if static else types.value_type(term.weight, m, report, (*key, "weight"))
        )
        if weight.axes is not None and weight.axes not in ((), ("batch",)):
            out.append(
                ctx.diag(
                    "KD317",
                    f"the weight of `{term.name}` has the axes {axes_text(weight.axes)}; a "
                    "weight is a number or one value per sample",
                    (*key, "weight"),
                    "not per sample",
                    help="reduce it to one value per sample, e.g. `max(p, over=class)`",
                )
            )
        elif weight.axes == ("batch",) and not per_sample_loss:
            out.append(
                ctx.diag(
                    "KD317",
                    f"`{term.name}` weighs samples, but its loss is already one number for "
                    "the batch",
                    (*key, "weight"),
                    "one value per sample",
                    help="write the loss as a `def` that gives one value per sample, e.g. "
                    "`sum(..., over=class)` without the mean over the batch",
                )
            )
        if per_sample_loss and static:
            out.append(
                ctx.diag(
                    "KD316",
                    f"the loss of `{term.name}` gives one value per sample; say how to "
                    "normalise their sum",
                    (*key, "loss"),
                    "one value per sample",
                    help="add a weight with the normaliser: `weight 1 / B` (the batch mean) "
                    "or `weight w / sum(w, over=batch)`",
                )
            )
    return out
