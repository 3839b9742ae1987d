"""What changes between two methods: roles, terms, stages, parameters and the rest.

Both methods are compared in canonical form (:mod:`kdspec.ir.canonical`), so a change of
spelling is never a change. Roles and data parts are paired by structure, not by name: under
the pairing that makes the most terms equal. Terms are paired by content, then by name, then by
the most equal fields, so a renamed part is reported as *renamed*, not as removed and added,
and a field counts as changed only when it differs both as written and by value. A stage
view (:func:`stage_view`) restricts a method to one stage, so the two stages of FitNets can
be compared as two methods.

Example:
    >>> from kdspec.api import load_method
    >>> a = load_method("hinton").method
    >>> b = load_method("hinton", overrides={"T": "2"}).method
    >>> print(render(diff(a, b)))
    ~ param `T`: 4 -> 2
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdspec.graph import build_graph, types
from kdspec.ir import models as ir
from kdspec.ir.canonical import canonical_stages, canonicalize, fold
from kdspec.ir.canonical import rename as canonical_rename
from kdspec.ir.printer import expr_text
from kdspec.ir.traverse import transform

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
# Both methods prepared: canonical (symbolic), canonical with parameters inlined (by value)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    original: ir.Method
    sym: ir.Method
    val: ir.Method


def _prepare(m: ir.Method) -> _Prepared:
    return _Prepared(m, canonicalize(m), canonicalize(m, values=True))


def _rename_params(m: ir.Method, mapping: dict[str, str]) -> ir.Method:
    if not mapping:
        return m

    def step(node: Any) -> Any:
        if isinstance(node, ir.ParamRef) and node.name in mapping:
            return ir.ParamRef(name=mapping[node.name])
        return node

    out = transform(m, step)
    return out.model_copy(update={"params": {mapping.get(k, k): v for k, v in out.params.items()}})


def _exprs(items: Sequence[ir.Expr]) -> str:
    return ", ".join(expr_text(i) for i in items) or "-"


def _role_fields(r: ir.Role) -> dict[str, str]:
    return {
        "kind": r.kind,
        "mode": r.mode,
        "source": r.source or "-",
        "options": ", ".join(f"{k}={expr_text(v)}" for k, v in sorted(r.options.items())) or "-",
        "view": r.view or "-",
        "like": (f"{r.like} {r.size}" if r.size else r.like) if r.like else "-",
        "from": r.init_from or "-",
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
    if s.unit == "fraction":  # lowered as a fraction of training: shown in percent again
        return f"{expr_text(fold(ir.BinOp(op='*', left=d, right=ir.Num(value=100.0))))} %"
    return f"{expr_text(fold(d))} {s.unit or 'epochs'}"


def _stage_fields(s: ir.Stage, all_terms: set[str]) -> dict[str, str]:
    losses = sorted(s.losses)
    return {
        "duration": _duration(s),
        "repeat": expr_text(fold(s.repeat)) if s.repeat is not None else "-",
        "train": _exprs(s.train),
        "freeze": _exprs(s.freeze),
        "losses": ", ".join(losses) if losses and set(losses) != all_terms else "(all terms)",
        "handoff": ", ".join(f"{a} -> {b}" for a, b in s.handoffs) or "-",
    }


def _ensemble_fields(e: ir.Ensemble) -> dict[str, str]:
    members = e.members if e.weights else tuple(sorted(e.members))
    return {
        "members": ", ".join(members),
        "weights": expr_text(e.weights) if e.weights else "-",
    }


def _data_fields(d: ir.DataPart) -> dict[str, str]:
    args = [expr_text(a) for a in d.args] + [
        f"{k}={expr_text(v)}" for k, v in sorted(d.kwargs.items())
    ]
    return {"kind": d.kind, "func": d.func or "-", "args": ", ".join(args) or "-"}


def _text(fields: dict[str, str]) -> str:
    return "; ".join(f"{k} {v}" for k, v in fields.items() if v not in ("-", ""))


def _details(
    sym_a: dict[str, str],
    sym_b: dict[str, str],
    val_a: dict[str, str] | None = None,
    val_b: dict[str, str] | None = None,
) -> tuple[str, ...]:
    """``field: old -> new`` for every field that differs both as written and by value."""
    out = []
    for k in sym_a | sym_b:
        if sym_a.get(k) == sym_b.get(k):
            continue
        if val_a is not None and val_b is not None and val_a.get(k) == val_b.get(k):
            continue  # the same value spelt another way (or through a parameter)
        out.append(f"{k}: {sym_a.get(k, '-')} -> {sym_b.get(k, '-')}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Matching roles and data by structure
# ---------------------------------------------------------------------------------------------

_MAX_CANDIDATES = 2000


def _injections(xs: list[str], ys: list[str]) -> list[list[tuple[str, str]]]:
    """Every way to pair the shorter list with distinct members of the longer one."""
    if len(xs) <= len(ys):
        return [list(zip(xs, p, strict=True)) for p in itertools.permutations(ys, len(xs))]
    return [list(zip(p, ys, strict=True)) for p in itertools.permutations(xs, len(ys))]


def _ensemble_map(a: ir.Method, b: ir.Method, names: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for ea in a.ensembles:
        mapped = ea.model_copy(update={"members": tuple(names.get(x, x) for x in ea.members)})
        fa = _ensemble_fields(mapped)
        twin = next(
            (eb.name for eb in b.ensembles if eb.name not in used and _ensemble_fields(eb) == fa),
            None,
        )
        if twin is None and b.ensembles and any(eb.name == ea.name for eb in b.ensembles):
            twin = ea.name if ea.name not in used else None
        if twin is not None:
            out[ea.name] = twin
            used.add(twin)
    return out


def _term_key(t: ir.Term) -> str:
    return t.model_copy(update={"name": "", "origin": None}).model_dump_json()


def _part_names(a: ir.Method, b: ir.Method) -> dict[str, str]:
    """Roles and data parts of ``a`` paired with those of ``b`` (same kind), chosen so that the
    most terms become equal, then the most parts, then the most names."""
    groups: list[list[list[tuple[str, str]]]] = []
    for kind in ("teacher", "student", "assistant", "peer"):
        xs = [r.name for r in a.roles if r.kind == kind]
        ys = [r.name for r in b.roles if r.kind == kind]
        groups.append(_injections(xs, ys))
    for kind in ("view", "subset"):
        xs = [d.name for d in a.data if d.kind == kind]
        ys = [d.name for d in b.data if d.kind == kind]
        groups.append(_injections(xs, ys))
    if math.prod(len(g) for g in groups) > _MAX_CANDIDATES:
        same = {r.name for r in a.roles} & {r.name for r in b.roles}
        same |= {d.name for d in a.data} & {d.name for d in b.data}
        return {n: n for n in same}
    b_terms = Counter(_term_key(t) for t in b.terms)
    b_roles = {r.name: _role_fields(r) for r in b.roles}
    best: tuple[tuple[int, int, int], dict[str, str]] | None = None
    for combo in itertools.product(*groups):
        names = {x: y for pairs in combo for x, y in pairs}
        names |= _ensemble_map(a, b, names)
        renamed = canonical_rename(a, names)
        terms = sum((Counter(_term_key(t) for t in renamed.terms) & b_terms).values())
        roles = sum(
            1 for r in renamed.roles if r.name in b_roles and _role_fields(r) == b_roles[r.name]
        )
        kept = sum(1 for x, y in names.items() if x == y)
        score = (terms, roles, kept)
        if best is None or score > best[0]:
            best = (score, names)
    assert best is not None
    return best[1]


# ---------------------------------------------------------------------------------------------
# The diff
# ---------------------------------------------------------------------------------------------


def _pair_parts(
    what: str,
    a: dict[str, Any],
    b: dict[str, Any],
    mapping: dict[str, str],
    fields: Callable[[Any], dict[str, str]],
    describe: Callable[[Any], str],
) -> list[Change]:
    """Parts paired by ``mapping`` (a's name -> b's name); the others are removed or added."""
    out: list[Change] = []
    for na, part in a.items():
        nb = mapping.get(na)
        if nb is None or nb not in b:
            continue
        details = _details(fields(part), fields(b[nb]))
        if na != nb:
            out.append(Change("renamed", what, nb, na, details))
        elif details:
            out.append(Change("changed", what, nb, None, details))
    paired = {mapping[n] for n in a if n in mapping and mapping[n] in b}
    out += [
        Change("removed", what, n, None, (describe(p),))
        for n, p in a.items()
        if mapping.get(n) not in b
    ]
    out += [Change("added", what, n, None, (describe(p),)) for n, p in b.items() if n not in paired]
    return out


def _let_key(let: ir.Let) -> str:
    """A let's value with the lets it reads unnamed (their names are paired later)."""
    return expr_text(
        let.value.transform(
            lambda n: n.model_copy(update={"name": "?"}) if isinstance(n, ir.LetRef) else n
        )
    )


def _params(
    a: _Prepared, b: _Prepared, names: dict[str, str]
) -> tuple[list[Change], dict[str, str]]:
    """Parameters paired by name, then the rest by value and use: among parameters of equal
    value, the pairing under which the most terms read the same."""
    pa = {k: expr_text(v) for k, v in a.sym.params.items()}
    pb = {k: expr_text(v) for k, v in b.sym.params.items()}
    out: list[Change] = []
    mapping = {k: k for k in pa if k in pb}
    for name in mapping:
        if pa[name] != pb[name]:
            out.append(Change("changed", "param", name, None, (f"{pa[name]} -> {pb[name]}",)))
    left_a = [n for n in pa if n not in pb]
    left_b = [n for n in pb if n not in pa]
    groups = [
        _injections([x for x in left_a if pa[x] == v], [y for y in left_b if pb[y] == v])
        for v in dict.fromkeys(pa[x] for x in left_a)
    ]
    if groups and math.prod(len(g) for g in groups) <= _MAX_CANDIDATES:
        renamed = canonical_rename(a.sym, names)
        b_terms = Counter(_term_key(t) for t in b.sym.terms)
        b_lets = Counter(_let_key(x) for x in b.sym.lets)
        best: tuple[int, dict[str, str]] | None = None
        for combo in itertools.product(*groups):
            extra = {x: y for pairs in combo for x, y in pairs}
            trial = _rename_params(renamed, mapping | extra)
            score = sum((Counter(_term_key(t) for t in trial.terms) & b_terms).values())
            # Lets read parameters too (ONE's `branches(n=m - 1)`, beside T = m = 3).
            score += sum((Counter(_let_key(x) for x in trial.lets) & b_lets).values())
            if best is None or score > best[0]:
                best = (score, extra)
        assert best is not None
        for x, y in best[1].items():
            mapping[x] = y
            out.append(Change("renamed", "param", y, x))
    out += [
        Change("removed", "param", n, None, (f"= {pa[n]}",)) for n in left_a if n not in mapping
    ]
    paired = set(mapping.values())
    out += [Change("added", "param", n, None, (f"= {pb[n]}",)) for n in left_b if n not in paired]
    return out, mapping


def _terms(
    a: _Prepared, b: _Prepared, names: dict[str, str]
) -> tuple[list[Change], dict[str, str]]:
    """Terms paired by content (name-blind), then by name, then by the most equal fields."""
    sym_a = {t.name: _term_fields(t) for t in a.sym.terms}
    val_a = {t.name: _term_fields(t) for t in a.val.terms}
    sym_b = {t.name: _term_fields(t) for t in b.sym.terms}
    val_b = {t.name: _term_fields(t) for t in b.val.terms}

    def equal_fields(na: str, nb: str) -> int:
        return sum(sym_a[na][f] == sym_b[nb][f] or val_a[na][f] == val_b[nb][f] for f in sym_a[na])

    full = len(next(iter(sym_a.values()), {}))
    out: list[Change] = []
    pairs: dict[str, str] = {}
    left_b = list(sym_b)
    for na in sym_a:  # identical content: prefer the same name
        twins = [nb for nb in left_b if equal_fields(na, nb) == full]
        if twins:
            nb = na if na in twins else twins[0]
            pairs[na] = nb
            left_b.remove(nb)
    for na in sym_a:
        if na not in pairs and na in left_b:
            pairs[na] = na
            left_b.remove(na)
    # The rest: a term and its one most similar counterpart, when each is the other's only
    # best match (two equally close candidates are left as removed and added).
    for na in sym_a:
        if na in pairs:
            continue
        cands = [nb for nb in left_b if sym_a[na]["kind"] == sym_b[nb]["kind"]]
        if not cands:
            continue
        top = max(equal_fields(na, nb) for nb in cands)
        best = [nb for nb in cands if equal_fields(na, nb) == top]
        if top < full - 3 or len(best) != 1:
            continue
        rivals = [x for x in sym_a if x not in pairs and equal_fields(x, best[0]) >= top]
        if rivals == [na]:
            pairs[na] = best[0]
            left_b.remove(best[0])
    for na, nb in pairs.items():
        details = _details(sym_a[na], sym_b[nb], val_a[na], val_b[nb])
        if na != nb:
            out.append(Change("renamed", "term", nb, na, details))
        elif details:
            out.append(Change("changed", "term", nb, None, details))
    originals_a = {t.name: t for t in a.sym.terms}
    originals_b = {t.name: t for t in b.sym.terms}
    out += [
        Change("removed", "term", na, None, (term_text(originals_a[na]),))
        for na in sym_a
        if na not in pairs
    ]
    out += [Change("added", "term", nb, None, (term_text(originals_b[nb]),)) for nb in left_b]
    return out, pairs


def _stages(a: ir.Method, b: ir.Method, names: dict[str, str]) -> list[Change]:
    """Stages paired in order (by name when their numbers differ), ``a`` read in b's names."""
    if not a.stages and not b.stages:
        return []
    ra = canonical_rename(
        a, {k: v for k, v in names.items() if k not in {s.name for s in a.stages}}
    )
    terms_a = {t.name for t in ra.terms}
    terms_b = {t.name for t in b.terms}
    sa = {s.name: _stage_fields(s, terms_a) for s in ra.effective_stages()}
    sb = {s.name: _stage_fields(s, terms_b) for s in b.effective_stages()}
    if len(sa) == len(sb):
        mapping = dict(zip(sa, sb, strict=True))
    else:
        mapping = {n: n for n in sa if n in sb}
    return _pair_parts("stage", sa, sb, mapping, lambda f: f, _text)


def diff(a: ir.Method, b: ir.Method) -> list[Change]:
    """The changes that turn method ``a`` into method ``b``, compared in canonical form.

    Roles and data parts are paired by structure (the pairing under which the most terms are
    equal), so renamed roles are *renamed* and their terms unchanged; terms are paired by
    content, then by name, then by the most equal fields; a field counts as changed only if it
    differs both as written and by value (``0.9`` and ``9 / 10`` are one value). Stages are
    paired in order.
    """
    pa, pb = _prepare(a), _prepare(b)
    val_a = pa.val
    names = _part_names(val_a, pb.val)
    out, param_map = _params(pa, pb, names)
    sym_a = _rename_params(pa.sym, param_map)
    ens = {e.name: names[e.name] for e in a.ensembles if e.name in names}
    ra = canonical_rename(sym_a, names)
    out += _pair_parts(
        "role",
        {x.name: y for x, y in zip(sym_a.roles, ra.roles, strict=True)},
        {r.name: r for r in pb.sym.roles},
        {r.name: names[r.name] for r in sym_a.roles if r.name in names},
        _role_fields,
        lambda r: _text(_role_fields(r)),
    )
    out += _pair_parts(
        "ensemble",
        {
            e.name: e.model_copy(update={"members": tuple(names.get(x, x) for x in e.members)})
            for e in sym_a.ensembles
        },
        {e.name: e for e in pb.sym.ensembles},
        ens,
        _ensemble_fields,
        lambda e: _text(_ensemble_fields(e)),
    )
    for kind in ("view", "subset"):
        out += _pair_parts(
            kind,
            {d.name: d for d in sym_a.data if d.kind == kind},
            {d.name: d for d in pb.sym.data if d.kind == kind},
            {d.name: names[d.name] for d in sym_a.data if d.name in names},
            _data_fields,
            lambda d: _text(_data_fields(d)),
        )
    # Lets left after canonicalisation (shared adapters, bindings a stage names).
    lets_b = {x.name: x for x in pb.sym.lets}
    let_map = {x.name: x.name for x in ra.lets if x.name in lets_b}

    def renamed(e: ir.Expr) -> ir.Expr:  # a let's value with the lets it reads paired so far
        return e.transform(
            lambda n: (
                n.model_copy(update={"name": let_map[n.name]})
                if isinstance(n, ir.LetRef) and n.name in let_map
                else n
            )
        )

    paired = True
    while paired:  # a let reading another let pairs once that one has (ONE's `gated`)
        paired = False
        for x in ra.lets:
            if x.name in let_map:
                continue
            value = renamed(x.value)
            twin = next(
                (y for y in lets_b if y not in let_map.values() and lets_b[y].value == value),
                None,
            )
            if twin is not None:
                let_map[x.name] = twin
                paired = True
    out += _pair_parts(
        "let",
        {x.name: x.model_copy(update={"value": renamed(x.value)}) for x in ra.lets},
        lets_b,
        let_map,
        lambda x: {"value": expr_text(x.value)},
        lambda x: f"= {expr_text(x.value)}",
    )
    names |= let_map
    term_changes, term_map = _terms(
        _Prepared(a, canonical_rename(sym_a, names), canonical_rename(val_a, names)),
        pb,
        names,
    )
    out += term_changes
    names |= term_map
    out += _stages(
        _rename_params(a, param_map).model_copy(update={"stages": canonical_stages(sym_a)}),
        b.model_copy(update={"stages": canonical_stages(b)}),
        names,
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
    return out


def only_renames(changes: Sequence[Change]) -> bool:
    """True when the methods differ in names only (the same computation)."""
    return all(c.op == "renamed" and not c.details for c in changes)


def render(
    changes: Sequence[Change], a_label: str | None = None, b_label: str | None = None
) -> str:
    """The changes as text, one part per line, with ``---``/``+++`` headers when labelled."""
    lines = []
    if a_label is not None and b_label is not None:
        lines += [f"--- {a_label}", f"+++ {b_label}"]
    lines += [c.render() for c in changes] or ["no differences"]
    if changes and only_renames(changes):
        lines.append("no differences in meaning (names only)")
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


__all__ = ["Change", "diff", "only_renames", "render", "stage_view", "term_text"]
