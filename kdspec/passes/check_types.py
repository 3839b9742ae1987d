"""KD301/KD302: the loss accepts the knowledge, and both sides carry the same kind."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.passes.context import PassContext
from kdspec.vocabulary import FUNCTIONS, RAW_KINDS


def _hint(wanted: str, got: str) -> str | None:
    """A fix that keeps the quantity the user wrote, or none.

    Raw logits read by a distribution loss mean the softmax of those logits (KD's reading), so
    that fix is offered. Nothing else is: a softmax over features, or a different loss,
    computes something else (`pearson` on features is not DIST after a softmax, nor an `mse`).
    """
    if wanted == "distribution" and got == "logits":
        return "make both sides distributions: `transfer softmax from ... to ...`"
    return None


_NAMES = {
    "features": "a feature tensor",
    "logits": "raw logits",
    "embedding": "an embedding",
    "distribution": "a distribution",
    "attention": "an attention map",
    "gram": "a Gram matrix",
    "similarity": "a similarity matrix",
    "distance": "a distance matrix",
    "angle": "an angle tensor",
    "channel_distribution": "channel distributions",
    "gaussian": "a Gaussian",
    "scalar": "a number",
}


def _article(kind: str) -> str:
    return _NAMES.get(kind, kind)


def _compatible(a: str, b: str) -> bool:
    return a == b or (a in RAW_KINDS and b in RAW_KINDS)


def check_types(ctx: PassContext) -> list[Diagnostic]:
    """Type-check every term's knowledge against its loss."""
    m = ctx.method
    out: list[Diagnostic] = []
    for term in m.terms:
        fn = FUNCTIONS.get(term.loss.func)
        if fn is None or fn.category != "loss" or types.term_has_unknown(term, m):
            continue
        key = ("term", term.name)
        target = (
            types.side_kind(term, "target", m)
            if term.kind == "transfer"
            else types.expr_kind(term.target, m)
        )
        if term.kind == "supervise":
            if fn.inputs == 2:
                out.append(
                    ctx.diag(
                        "KD301",
                        f"`{term.loss.func}` compares two sides; `supervise` has only labels",
                        (*key, "loss"),
                        help="supervise with `cross_entropy`",
                    )
                )
            elif fn.accepts and target not in fn.accepts:
                out.append(
                    ctx.diag(
                        "KD301",
                        f"`{term.loss.func}` needs logits, got {_article(target)}",
                        (*key, "target"),
                        f"{_article(target)}",
                        help="supervise `s.logits`",
                    )
                )
            continue
        if fn.inputs == 1:
            out.append(
                ctx.diag(
                    "KD301",
                    f"`{term.loss.func}` takes labels, not a teacher",
                    (*key, "loss"),
                    help="use `supervise` for label losses",
                )
            )
            continue
        source = types.side_kind(term, "source", m)
        teacher_ok = fn.teacher_accepts if fn.teacher_accepts is not None else fn.accepts
        bad = []
        if fn.accepts and target not in fn.accepts:
            bad.append(("target", target))
        if teacher_ok and source not in teacher_ok:
            bad.append(("source", source))
        if len(bad) == 2 and bad[0][1] == bad[1][1] and fn.teacher_accepts is None:
            # Both sides carry the same wrong kind: one diagnostic, both sides labelled.
            wanted = " or ".join(sorted(fn.accepts))
            kind = bad[0][1]
            out.append(
                ctx.diag(
                    "KD301",
                    f"`{term.loss.func}` needs {wanted} knowledge, but both sides carry "
                    f"{_article(kind)}",
                    (*key, "target"),
                    f"{_article(kind)}",
                    help=_hint(wanted, kind),
                    related=(
                        ((*key, "source"), f"{_article(kind)}"),
                        ((*key, "loss"), f"`{term.loss.func}` here"),
                    ),
                )
            )
            bad = []  # reported as one
            continue
        for side, kind in bad:
            wanted = " or ".join(sorted(fn.accepts if side == "target" else teacher_ok))
            out.append(
                ctx.diag(
                    "KD301",
                    f"`{term.loss.func}` needs {wanted} knowledge, but the "
                    f"{'student' if side == 'target' else 'teacher'} side is {_article(kind)}",
                    (*key, side),
                    f"{_article(kind)}",
                    help=_hint(wanted, kind),
                    related=(((*key, "loss"), f"`{term.loss.func}` here"),),
                )
            )
        if bad or fn.teacher_accepts is not None:
            continue
        if not _compatible(source, target):
            out.append(
                ctx.diag(
                    "KD302",
                    f"`{term.name}` matches {_article(source)} with {_article(target)}",
                    (*key, "target"),
                    f"{_article(target)}",
                    related=(((*key, "source"), f"{_article(source)}"),),
                    help="apply the same knowledge transform to both sides (put it before `from`)",
                )
            )
    return out
