"""What changes between two methods: roles, terms, stages, parameters and the rest.

Parts are matched by name first; what is left is matched by content, so a term (or role,
stage, ...) renamed with nothing else changed is reported as *renamed*, not as removed and
added. A stage view (:func:`stage_view`) restricts a method to one stage, so the two stages of
FitNets can be compared as two methods.

Example:
    >>> from kdspec.api import load_method
    >>> a = load_method("hinton").method
    >>> b = load_method("hinton", overrides={"T": "2"}).method
    >>> print(render(diff(a, b)))
    ~ param `T`: 4 -> 2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdspec.graph import build_graph, types
from kdspec.ir import models as ir
from kdspec.ir.printer import expr_text

_SYMBOL = {"added": "+", "removed": "-", "changed": "~", "renamed": ">"}


@dataclass(frozen=True)
class Change:
    """One difference between two methods.

    Attributes:
        op: ``added``, ``removed``, ``changed`` or ``renamed`` (renamed may also change).
        what: ``param``, ``role``, ``ensemble``, ``view``, ``subset``, ``let``, ``term``,
            ``stage``, ``claim`` or ``use``.
        name: the name in the second method (in the first, if removed).
        old_name: the name in the first method, when renamed.
        details: one ``field: old -> new`` line per changed field, or the part's text when it
            is added or removed.
    """

    op: str
    what: str
    name: str
    old_name: str | None = None
    details: tuple[str, ...] = ()

    def render(self) -> str:
        """``~ term `kd`: weight 1 -> 2`` and the like (several details on further lines)."""
        head = f"{_SYMBOL[self.op]} {self.what} `{self.name}`"
        if self.op == "renamed":
            head = f"{_SYMBOL[self.op]} {self.what} `{self.old_name}` renamed to `{self.name}`"
        if len(self.details) == 1:
            return f"{head}: {self.details[0]}"
        return "\n".join(
            [head + (":" if self.details else ""), *(f"    {d}" for d in self.details)]
        )


def term_text(term: ir.Term) -> str:
    """A term written back in spec syntax, without its label."""
    weight = "" if term.weight == ir.Num(value=1.0) else f" weight {expr_text(term.weight)}"
    on = f" on {term.subset}" if term.subset else ""
    if term.kind == "supervise":
        return f"supervise {expr_text(term.target)} with {expr_text(term.loss)}{weight}{on}"
    know = " | ".join(expr_text(k) for k in term.knowledge)
    mapping = f" map {term.mapping}" if term.mapping else ""
    return (
        f"transfer {know + ' ' if know else ''}from {expr_text(term.source)} to "
        f"{expr_text(term.target)}{mapping} with {expr_text(term.loss)}{weight}{on}"
    )


# ---------------------------------------------------------------------------------------------
# Field views of each part: name -> text, compared field by field
# ---------------------------------------------------------------------------------------------


def _exprs(items: Sequence[ir.Expr]) -> str:
    return ", ".join(expr_text(i) for i in items) or "-"


def _role_fields(r: ir.Role) -> dict[str, str]:
    return {
        "kind": r.kind,
        "mode": r.mode,
        "source": r.source or "-",
        "options": ", ".join(f"{k}={expr_text(v)}" for k, v in sorted(r.options.items())) or "-",
        "view": r.view or "-",
    }


def _term_fields(t: ir.Term) -> dict[str, str]:
    return {
        "kind": t.kind,
        "knowledge": " | ".join(expr_text(k) for k in t.knowledge) or "-",
        "from": expr_text(t.source) or "-",
        "to": expr_text(t.target),
        "map": t.mapping or "-",
        "loss": expr_text(t.loss),
        "weight": expr_text(t.weight),
        "on": t.subset or "-",
    }


def _duration(s: ir.Stage) -> str:
    d = s.duration
    if d is None:
        return "-"
    if s.unit == "fraction":
        # Lowering stores `n %` as n / 100.
        if isinstance(d, ir.BinOp) and d.op == "/" and d.right == ir.Num(value=100.0):
            return f"{expr_text(d.left)} %"
        return f"{expr_text(d)} of training"
    return f"{expr_text(d)} {s.unit or 'epochs'}"


def _stage_fields(s: ir.Stage) -> dict[str, str]:
    return {
        "duration": _duration(s),
        "repeat": expr_text(s.repeat) if s.repeat is not None else "-",
        "train": _exprs(s.train),
        "freeze": _exprs(s.freeze),
        "losses": ", ".join(s.losses) or "(all terms)",
        "handoff": ", ".join(f"{a} -> {b}" for a, b in s.handoffs) or "-",
    }


def _ensemble_fields(e: ir.Ensemble) -> dict[str, str]:
    return {
        "members": ", ".join(e.members),
        "weights": ", ".join(f"{w:g}" for w in e.weights) if e.weights else "-",
    }


def _data_fields(d: ir.DataPart) -> dict[str, str]:
    args = [expr_text(a) for a in d.args] + [
        f"{k}={expr_text(v)}" for k, v in sorted(d.kwargs.items())
    ]
    return {"kind": d.kind, "func": d.func or "-", "args": ", ".join(args) or "-"}


def _text(fields: dict[str, str]) -> str:
    return "; ".join(f"{k} {v}" for k, v in fields.items() if v not in ("-", ""))


def _compare(a: dict[str, str], b: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}" for k in a | b if a.get(k) != b.get(k))


def _match(
    what: str,
    a: dict[str, Any],
    b: dict[str, Any],
    fields: Callable[[Any], dict[str, str]],
    describe: Callable[[Any], str],
    pair: Callable[[Any, Any], bool] | None = None,
) -> list[Change]:
    """Match two named collections: by name, then by identical content, then by ``pair``."""
    out: list[Change] = []
    for name in a:
        if name in b:
            details = _compare(fields(a[name]), fields(b[name]))
            if details:
                out.append(Change("changed", what, name, None, details))
    left_a = [n for n in a if n not in b]
    left_b = [n for n in b if n not in a]
    for na in list(left_a):
        twin = next((nb for nb in left_b if fields(a[na]) == fields(b[nb])), None)
        if twin is not None:
            out.append(Change("renamed", what, twin, na))
            left_a.remove(na)
            left_b.remove(twin)
    if pair is not None:
        for na in list(left_a):
            cands = [nb for nb in left_b if pair(a[na], b[nb])]
            back = [x for x in left_a if cands and pair(a[x], b[cands[0]])]
            if len(cands) == 1 and len(back) == 1:
                nb = cands[0]
                details = _compare(fields(a[na]), fields(b[nb]))
                out.append(Change("renamed", what, nb, na, details))
                left_a.remove(na)
                left_b.remove(nb)
    out += [Change("removed", what, n, None, (describe(a[n]),)) for n in left_a]
    out += [Change("added", what, n, None, (describe(b[n]),)) for n in left_b]
    return out


def diff(a: ir.Method, b: ir.Method) -> list[Change]:
    """The changes that turn method ``a`` into method ``b``.

    Terms are matched by name, then by content (a renamed term is *renamed*), then a lone
    unmatched term on each side reading the same taps is paired (*renamed* with its changes).
    Stages likewise, where a lone unmatched stage on each side is always paired.
    """
    out: list[Change] = []
    pa = {k: expr_text(v) for k, v in a.params.items()}
    pb = {k: expr_text(v) for k, v in b.params.items()}
    for name in pa:
        if name in pb and pa[name] != pb[name]:
            out.append(Change("changed", "param", name, None, (f"{pa[name]} -> {pb[name]}",)))
    out += [Change("removed", "param", n, None, (f"= {pa[n]}",)) for n in pa if n not in pb]
    out += [Change("added", "param", n, None, (f"= {pb[n]}",)) for n in pb if n not in pa]
    out += _match(
        "role",
        {r.name: r for r in a.roles},
        {r.name: r for r in b.roles},
        _role_fields,
        lambda r: _text(_role_fields(r)),
    )
    out += _match(
        "ensemble",
        {e.name: e for e in a.ensembles},
        {e.name: e for e in b.ensembles},
        _ensemble_fields,
        lambda e: _text(_ensemble_fields(e)),
    )
    for kind in ("view", "subset"):
        out += _match(
            kind,
            {d.name: d for d in a.data if d.kind == kind},
            {d.name: d for d in b.data if d.kind == kind},
            _data_fields,
            lambda d: _text(_data_fields(d)),
        )
    out += _match(
        "let",
        {x.name: x for x in a.lets},
        {x.name: x for x in b.lets},
        lambda x: {"value": expr_text(x.value)},
        lambda x: f"= {expr_text(x.value)}",
    )

    def same_taps(x: ir.Term, y: ir.Term) -> bool:
        return x.kind == y.kind and (x.source, x.target) == (y.source, y.target)

    out += _match(
        "term",
        {t.name: t for t in a.terms},
        {t.name: t for t in b.terms},
        _term_fields,
        term_text,
        same_taps,
    )
    out += _match(
        "stage",
        {s.name: s for s in a.stages},
        {s.name: s for s in b.stages},
        _stage_fields,
        lambda s: _text(_stage_fields(s)),
        lambda x, y: True,
    )
    renamed = {c.old_name: c.name for c in out if c.what == "stage" and c.op == "renamed"}
    order_a = [renamed.get(s.name, s.name) for s in a.stages]
    order_b = [s.name for s in b.stages]
    common = [n for n in order_a if n in order_b]
    if common != [n for n in order_b if n in order_a]:
        out.append(
            Change(
                "changed",
                "stage",
                "order",
                None,
                (f"{', '.join(common)} -> {', '.join(n for n in order_b if n in order_a)}",),
            )
        )
    ca = {c.dimension: ", ".join(c.values) for c in a.claims}
    cb = {c.dimension: ", ".join(c.values) for c in b.claims}
    for dim in ca | cb:
        if ca.get(dim) != cb.get(dim):
            op = "changed" if dim in ca and dim in cb else ("removed" if dim in ca else "added")
            text = (
                f"{ca[dim]} -> {cb[dim]}" if op == "changed" else f"= {ca.get(dim) or cb.get(dim)}"
            )
            out.append(Change(op, "claim", dim, None, (text,)))
    out += [Change("removed", "use", u, None) for u in a.uses if u not in b.uses]
    out += [Change("added", "use", u, None) for u in b.uses if u not in a.uses]
    return out


def render(
    changes: Sequence[Change], a_label: str | None = None, b_label: str | None = None
) -> str:
    """The changes as text, one part per line, with ``---``/``+++`` headers when labelled."""
    lines = []
    if a_label is not None and b_label is not None:
        lines += [f"--- {a_label}", f"+++ {b_label}"]
    lines += [c.render() for c in changes] or ["no differences"]
    return "\n".join(lines)


def stage_view(method: ir.Method, stage_name: str) -> ir.Method:
    """The method restricted to one stage: its active terms and the roles they use.

    The view is named ``method@stage``; its one stage keeps the stage's name, duration, what
    it trains and freezes and its handoffs (its ``losses`` list is implied by the terms kept).
    Claims are dropped: they describe the whole method.

    Raises:
        KeyError: if the method has no such stage.
    """
    kg = build_graph(method)
    stage = next((s for s in method.effective_stages() if s.name == stage_name), None)
    if stage is None:
        raise KeyError(stage_name)
    terms = kg.active_terms(stage)
    used: set[str] = set(kg.trained_roles(stage))
    taps: list[ir.Tap] = []
    for t in terms:
        for e in (t.source, t.target):
            taps.extend(tap for tap, _ in types.taps(e, method))
            used |= types.roles_read(e, method)
    used |= {a for pair in stage.handoffs for a in pair}
    for name in list(used):
        role = method.role(name)
        while role is not None and role.source and role.source not in used:
            used.add(role.source)
            role = method.role(role.source)
    ensembles = {tap.role for tap in taps}
    data = {tap.view for tap in taps if tap.view} | {t.subset for t in terms if t.subset}
    data |= {r.view for r in method.roles if r.name in used and r.view}
    lets = {
        ref.name
        for t in terms
        for e in (t.source, t.target, t.weight)
        for ref in ir.find_all(e, ir.LetRef, method)
    }
    return method.model_copy(
        update={
            "name": f"{method.name}@{stage.name}",
            "roles": tuple(r for r in method.roles if r.name in used),
            "ensembles": tuple(e for e in method.ensembles if e.name in ensembles),
            "data": tuple(d for d in method.data if d.name in data),
            "lets": tuple(x for x in method.lets if x.name in lets),
            "terms": tuple(terms),
            "stages": (stage.model_copy(update={"losses": ()}),),
            "claims": (),
        }
    )


__all__ = ["Change", "diff", "render", "stage_view", "term_text"]
