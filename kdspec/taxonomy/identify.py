"""Identify a method against the library by the structure of its graph, never by its name.

Each method gets a *fingerprint*: a ``networkx.DiGraph`` of its roles (by kind and mode), terms
(by loss, knowledge pipeline, mapping and schedules), term sides (by kind of knowledge and the
shape of the expression), taps (by abstract point), data views and subsets (by function) and
stages (by order), with the edges between them. Identifiers and hyperparameters are left out
of the node signatures; the hyperparameters (numbers, parameter values, keyword arguments,
layer indices, durations) sit beside them, so that

- an **exact** match is an isomorphism that also agrees on every hyperparameter;
- a match **up to hyperparameters** is an isomorphism of the signatures alone;
- a **composition** of library methods A and B is a spec into which A and B both embed
  (subgraph monomorphism, stage order ignored) and whose transfers they cover together;
- otherwise the **nearest** methods are ranked by a Jaccard score over node and edge
  signatures, with the terms, roles and stages that differ.

Example:
    >>> from kdspec.api import load_method
    >>> ident = identify(load_method("hinton", overrides={"T": "2"}))
    >>> [m.method for m in ident.up_to_hyperparameters]
    ['hinton']
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
from networkx.algorithms import isomorphism

from kdspec.diagnostics import Severity
from kdspec.graph import KdGraph, build_graph, types
from kdspec.ir import models as ir
from kdspec.ir.canonical import canonical_names, canonicalize
from kdspec.ir.canonical import fold as fold_sum
from kdspec.ir.evaluate import EvalError, evaluate, uses_progress
from kdspec.ir.printer import expr_text
from kdspec.ir.traverse import fold, map_children
from kdspec.passes import check_source
from kdspec.source import SourceFile
from kdspec.taxonomy.diff import term_text
from kdspec.vocabulary import FUNCTIONS, REQUIRED

if TYPE_CHECKING:
    from kdspec.ir import Lowered

# Isomorphisms tried when reporting hyperparameter differences (symmetric methods, e.g. three
# interchangeable teachers, have several), and embeddings tried for the terms they cover.
_MAX_ISOMORPHISMS = 64
_MAX_EMBEDDINGS = 32
# Node comparisons one graph match may make before it gives up (the answer is then "no match").
# A count, not a time, so that results do not depend on the machine.
_MATCH_BUDGET = 200_000
_NEAREST = 3


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------


def _hv(v: object) -> object:
    """A hyperparameter value in a comparable form."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return round(float(v), 9)
    if isinstance(v, list | tuple):
        return tuple(_hv(x) for x in v)
    return v


def _value(e: ir.Expr | None, params: dict[str, ir.Expr]) -> object:
    if e is None:
        return None
    if uses_progress(e, params):  # a schedule is its formula, never one of its values
        return _schedule_text(e, params)
    try:
        return _hv(evaluate(e, params))
    except EvalError:
        return expr_text(e)


def _schedule_text(e: ir.Expr, params: dict[str, ir.Expr]) -> str:
    """A value with schedules, parameters replaced by their values: ``2 * ramp(start=1, end=8)``."""
    return expr_text(_substituted(e, params))


def _substituted(e: ir.Expr, params: dict[str, ir.Expr]) -> ir.Expr:
    """``e`` with parameters replaced and every part without a schedule folded to its value."""

    def parts(frame: tuple[ir.Expr, int]) -> list[tuple[ir.Expr, int]]:
        n, depth = frame
        if depth > 50:
            return []
        if isinstance(n, ir.ParamRef) and n.name in params:
            return [(params[n.name], depth + 1)]
        if not uses_progress(n, params):
            return []
        if isinstance(n, ir.Call):
            return [(v, depth + 1) for v in n.kwargs.values()]
        if isinstance(n, ir.BinOp | ir.Neg | ir.ListE):
            return [(c, depth + 1) for c in n.children()]
        return []

    def combine(frame: tuple[ir.Expr, int], done: list[ir.Expr]) -> ir.Expr:
        n, depth = frame
        if depth > 50:
            return n
        if isinstance(n, ir.ParamRef) and n.name in params:
            return done[0]
        if not uses_progress(n, params):
            return _folded(n, params)
        if isinstance(n, ir.Call):
            return n.model_copy(update={"kwargs": dict(zip(n.kwargs, done, strict=True))})
        if isinstance(n, ir.BinOp | ir.Neg | ir.ListE):
            replacements = iter(done)
            return map_children(n, lambda _child: next(replacements))
        return n

    return fold((e, 0), parts, combine)


def _folded(e: ir.Expr, params: dict[str, ir.Expr]) -> ir.Expr:
    """``e`` as a number where it evaluates to one, else as it is."""
    try:
        v = evaluate(e, params)
    except EvalError:
        return e
    return ir.Num(value=float(v)) if isinstance(v, int | float) else e


def _call_hp(prefix: str, call: ir.Call, params: dict[str, ir.Expr]) -> list[tuple[str, object]]:
    """A call's keyword arguments, evaluated, with the vocabulary's defaults filled in."""
    fn = FUNCTIONS.get(call.func)
    names = list(fn.params) if fn else []
    names += [k for k in call.kwargs if k not in names]
    out = []
    for name in names:
        if name in call.kwargs:
            v = _value(call.kwargs[name], params)
        else:
            default = fn.params[name].default if fn else None
            if default is REQUIRED:
                continue
            v = _hv(default)
        out.append((f"{prefix}{call.func}.{name}", v))
    return out


def _skeleton(e: ir.Expr | None, m: ir.Method) -> str:
    """An expression without names or numbers: lets inlined, taps ``@``, other leaves ``#``,
    calls keep their function and positional arguments."""
    if e is None:
        return ""
    open_lets: list[str] = []

    def anonymize(n: ir.Expr) -> ir.Expr:
        if isinstance(n, ir.LetRef):
            let = m.let(n.name)
            if let is None or n.name in open_lets:
                return ir.Str(value="?")
            open_lets.append(n.name)
            try:
                return let.value.transform(anonymize)
            finally:
                open_lets.pop()
        if isinstance(n, ir.Tap):
            return ir.Str(value="@")
        if isinstance(n, ir.Num | ir.Str | ir.ParamRef):
            return ir.Str(value="#")
        if isinstance(n, ir.Call) and n.kwargs:  # its arguments are already anonymized
            return n.model_copy(update={"kwargs": {}})
        return n

    # Folded again once anonymous: the order of a sum must not follow the names it had.
    masked = e.transform(anonymize)
    return expr_text(masked.transform(lambda n: fold_sum(n) if isinstance(n, ir.BinOp) else n))


def _named_refs(e: ir.Expr, names: dict[str, str]) -> ir.Expr:
    """``e`` with the roles of its taps and the lets it reads under their canonical names."""

    def step(n: Any) -> Any:
        if isinstance(n, ir.Tap):
            return n.model_copy(update={"role": names.get(n.role, n.role)})
        if isinstance(n, ir.LetRef):
            return n.model_copy(update={"name": names.get(n.name, n.name)})
        return n

    return e.transform(step)


def fingerprint(method: ir.Method) -> nx.DiGraph:
    """The structural fingerprint of a method (see the module docstring).

    A projection of the method graph (:func:`kdspec.graph.build_graph`) of the canonical
    method: its role, ensemble, labels, data, term (loss), side (knowledge) and stage nodes,
    one tap node per tap a side reads (a ``flows`` edge), and the edges between them. Node
    attributes: ``sig`` (structure, name-free), ``loose`` (the signature used for
    composition: stages lose their order), ``hp`` (sorted ``(key, value)`` hyperparameters),
    ``kind`` and ``text`` (a description with names). Edge attribute: ``sig``.
    """
    return _Projection(build_graph(canonicalize(method))).graph


class _Projection:
    """Builds a fingerprint from a method graph, one kind of node at a time."""

    def __init__(self, kg: KdGraph) -> None:
        self.kg = kg
        self.m = kg.method
        # Names inside values (a weight computed from `s.logits`, a let it reads) are compared
        # by their structural names, so that renaming a role or a let changes no hyperparameter.
        self.names = canonical_names(self.m)
        self.graph = nx.DiGraph(name=self.m.name)
        self._roles()
        self._ensembles()
        self.node("labels", "labels", ("labels",), "the labels")
        self._data()
        for loss in self._of_type("loss"):
            self._term(loss)
        for i, stage in enumerate(self._of_type("stage")):
            self._stage(i, stage)

    # -- helpers --------------------------------------------------------------------------

    def _of_type(self, *types_: str) -> list[str]:
        """The method graph's nodes of the given types, in its order (the declaration order)."""
        return [n for n, d in self.kg.g.nodes(data=True) if d.get("type") in types_]

    def _in(self, node: str, *types_: str) -> list[tuple[str, dict[str, Any]]]:
        """The method graph's edges into ``node`` of the given types: (source, attributes)."""
        return [(u, d) for u, _, d in self.kg.g.in_edges(node, data=True) if d["type"] in types_]

    def _out(self, node: str, *types_: str) -> list[tuple[str, dict[str, Any]]]:
        return [(v, d) for _, v, d in self.kg.g.out_edges(node, data=True) if d["type"] in types_]

    def node(
        self,
        nid: str,
        kind: str,
        sig: tuple[Any, ...],
        text: str,
        hp: Iterable[Any] = (),
        loose: tuple[Any, ...] | None = None,
    ) -> None:
        self.graph.add_node(
            nid,
            kind=kind,
            sig=sig,
            loose=sig if loose is None else loose,
            hp=tuple(sorted(hp, key=lambda kv: kv[0])),
            text=text,
        )

    def edge(self, u: str, v: str, sig: str) -> None:
        g = self.graph
        if g.has_edge(u, v):
            g.edges[u, v]["sig"] = tuple(sorted({*g.edges[u, v]["sig"], sig}))
        else:
            g.add_edge(u, v, sig=(sig,))

    # -- nodes ----------------------------------------------------------------------------

    def _roles(self) -> None:
        roles = [self.kg.g.nodes[n]["name"] for n in self._of_type("role")]
        for role in (self.m.role(name) for name in roles):
            assert role is not None  # a role node is made from a role
            hp: list[tuple[str, object]] = []
            if role.mode in ("ema", "snapshot", "virtual"):
                hp = _call_hp("", ir.Call(func=role.mode, kwargs=role.options), self.m.params)
            like = f"like {role.size or 'same'}" if role.like else ""
            sig = ("role", role.kind, role.mode, like, "from" if role.init_from else "")
            self.node(f"role:{role.name}", "role", sig, f"{role.kind} `{role.name}`", hp)
        for role in (self.m.role(name) for name in roles):
            assert role is not None
            rid = f"role:{role.name}"
            for u, d in self._in(rid, role.mode, "like", "init_from"):
                if self.graph.has_node(u):
                    self.edge(u, rid, d["type"])

    def _ensembles(self) -> None:
        for nid in self._of_type("ensemble"):
            ens = self.m.ensemble(self.kg.g.nodes[nid]["name"])
            assert ens is not None
            weights = [("weights", _value(ens.weights, self.m.params))] if ens.weights else []
            sig = ("ensemble", "weighted" if ens.weights else "mean", len(ens.members))
            self.node(f"ens:{ens.name}", "ensemble", sig, f"ensemble `{ens.name}`", weights)
            for u, _ in self._in(nid, "member"):
                self.edge(u, f"ens:{ens.name}", "member")

    def _data(self) -> None:
        parts = {part.name: part for part in self.m.data}
        for nid in self._of_type("view", "subset"):
            part = parts[self.kg.g.nodes[nid]["name"]]
            hp = [
                (f"{part.func}.{k}", _value(v, self.m.params))
                for k, v in sorted(part.kwargs.items())
            ]
            hp.append((f"{part.func}.args", tuple(_value(a, self.m.params) for a in part.args)))
            self.node(nid, part.kind, (part.kind, part.func), f"{part.kind} `{part.name}`", hp)
        for rid in self._of_type("role"):
            for u, _ in self._in(rid, "sees"):
                self.edge(u, rid, "sees")

    def _term(self, loss: str) -> None:
        term = self.m.term(self.kg.g.nodes[loss]["term"])
        assert term is not None
        params, tid = self.m.params, f"term:{term.name}"
        schedules = sorted(
            c.func
            for c in list(ir.find_all(term.weight, ir.Call, self.m))
            if FUNCTIONS.get(c.func) is not None and FUNCTIONS[c.func].category == "schedule"
        )
        weight = _named_refs(term.weight, self.names)
        hp = [("weight", _value(weight, params)), *_call_hp("", term.loss, params)]
        for call in term.knowledge:
            hp.extend(_call_hp("", call, params))
        for call in ir.find_all(weight, ir.Call):
            hp.extend(_call_hp("weight.", call, params))
        knowledge = tuple(k.func for k in term.knowledge)
        sig = ("term", term.kind, term.loss.func, term.mapping or "", knowledge, tuple(schedules))
        self.node(tid, "term", sig, f"{term.kind} `{term.name}`: {term_text(term)}", hp)
        if term.kind == "supervise":
            self.edge("labels", tid, "labels")
        for u, _ in self._in(loss, "feeds"):
            if self.graph.has_node(u):
                self.edge(u, tid, "on")
        for kid, d in self._in(loss, "matched_by"):
            self._side(term, d["side"], kid)

    def _side(self, term: ir.Term, side: str, kid: str) -> None:
        data = self.kg.g.nodes[kid]
        expr: ir.Expr | None = data["expr"]
        sid = f"side:{term.name}/{side}"
        hp = []
        for call in ir.find_all(expr, ir.Call, self.m):
            hp.extend(_call_hp(f"{side}.", call, self.m.params))
        sig = ("side", side, data["kind"], _skeleton(expr, self.m))
        self.node(sid, "side", sig, f"`{term.name}` {side} `{expr_text(expr)}`", hp)
        self.edge(sid, f"term:{term.name}", side)
        flows = [(u, d) for u, d in self._in(kid, "flows") if u.startswith("tap:")]
        for u, d in sorted(flows, key=lambda ud: ud[1]["index"]):
            self._tap(u, f"tap:{term.name}/{side}/{d['index']}", d["stopgrad"], term.name, sid)

    def _tap(self, tap_node: str, pid: str, stop: bool, term: str, sid: str) -> None:
        tap: ir.Tap = self.kg.g.nodes[tap_node]["tap"]
        sig = ("tap", tap.point, tap.is_range, tap.io, stop, tap.view is not None)
        hp = [
            ("first", tap.first),
            ("last", tap.last),
            ("module", tap.module),
            ("call", tap.call),
            ("select", tap.select),
        ]
        self.node(pid, "tap", sig, f"tap `{types.tap_text(tap)}` of `{term}`", hp)
        for owner, _ in self._in(tap_node, "reads"):
            owner = owner.replace("ensemble:", "ens:", 1)
            if self.graph.has_node(owner):
                self.edge(owner, pid, "reads")
        self.edge(pid, sid, "flows")
        for view, _ in self._in(tap_node, "view"):
            self.edge(view, pid, "view")

    def _stage(self, i: int, node: str) -> None:
        name = self.kg.g.nodes[node]["name"]
        stage = next(s for s in self.m.effective_stages() if s.name == name)
        nid = f"stage:{i}"
        partial = tuple(
            types.tap_text(x.model_copy(update={"role": ""}))
            for x in stage.train
            if isinstance(x, ir.Tap) and x.point != "output"
        )
        hp = [
            ("duration", _value(stage.duration, self.m.params)),
            ("unit", stage.unit),
            ("repeat", _value(stage.repeat, self.m.params)),
            ("partial", partial),
        ]
        sig = ("stage", i, len(stage.handoffs), stage.repeat is not None)
        self.node(nid, "stage", sig, f"stage `{stage.name}`", hp, loose=("stage",))
        if i:
            self.edge(f"stage:{i - 1}", nid, "then")
        for v, d in self._out(node, *_STAGE_EDGES):
            target = v.replace("loss:", "term:", 1)
            if self.graph.has_node(target):
                self.edge(nid, target, d["type"])
        for u, v, d in self.kg.edges_of("handoff"):
            if d["stage"] == name and self.graph.has_node(u) and self.graph.has_node(v):
                self.edge(u, v, "handoff")


_STAGE_EDGES = ("activates", "trains", "trains_adapters", "trains_part", "freezes")


def _sig_match(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["sig"] == b["sig"]


def _loose_match(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["loose"] == b["loose"]


def _signatures(g: nx.DiGraph) -> Counter[object]:
    """Node signatures and (signature, edge, signature) triples, as a multiset.

    A role also counts by its kind and by whether it is a network at all, so that a role that
    changed state (a teacher made trainable) stays closer to a network teacher than to a
    virtual one.
    """
    out: Counter[object] = Counter(("node", d["sig"]) for _, d in g.nodes(data=True))
    for _, d in g.nodes(data=True):
        if d["kind"] == "role":
            out[("role kind", d["sig"][1])] += 1
            out[("role network", d["sig"][1], d["sig"][2] != "virtual")] += 1
    for u, v, d in g.edges(data=True):
        out[("edge", g.nodes[u]["sig"], d["sig"], g.nodes[v]["sig"])] += 1
    return out


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One library method and how the spec relates to it.

    ``kind``: ``exact``, ``hyperparameters``, ``part`` (embedded in a composition) or
    ``nearest``. ``differences`` says what differs, in words (hyperparameters for a match up to
    hyperparameters, terms, roles and stages for a near one).
    """

    method: str
    kind: str
    score: float = 1.0
    differences: tuple[str, ...] = ()
    path: str | None = None
    covers: tuple[str, ...] = ()
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Identification:
    """What a spec is, in terms of the library."""

    method: str
    exact: tuple[Match, ...] = ()
    up_to_hyperparameters: tuple[Match, ...] = ()
    composition: tuple[Match, ...] = ()
    uncovered: tuple[str, ...] = ()
    nearest: tuple[Match, ...] = ()

    @property
    def is_composition(self) -> bool:
        """Two or more library methods embed and together cover every transfer."""
        return len(self.composition) >= 2 and not self.uncovered

    def summary(self) -> str:
        """One line: the strongest statement that holds."""
        if self.exact:
            return f"`{self.method}` is {_names(m.method for m in self.exact)} (exact match)"
        if self.up_to_hyperparameters:
            return (
                f"`{self.method}` is {_names(m.method for m in self.up_to_hyperparameters)} "
                "up to hyperparameters"
            )
        if self.is_composition:
            return f"`{self.method}` is a composition of {_and(m.method for m in self.composition)}"
        if self.nearest:
            best = self.nearest[0]
            return f"`{self.method}` is nearest to `{best.method}` (similarity {best.score:.2f})"
        return f"`{self.method}` resembles no library method"

    def render(self) -> str:
        """A multi-line report (``kdspec identify``)."""
        lines = [self.summary()]
        for m in self.up_to_hyperparameters:
            lines.append(f"  same structure as `{m.method}`; hyperparameters that differ:")
            lines += [f"    {d}" for d in m.differences]
        if self.composition:
            word = "composed of" if self.is_composition else "contains"
            lines.append(f"  {word}:")
            for m in self.composition:
                same = f" (same structure: {_names(m.also)})" if m.also else ""
                lines.append(f"    `{m.method}`{same}: covers {_names(m.covers)}")
            if self.uncovered:
                lines.append(f"    not covered by the library: {_names(self.uncovered)}")
        if not self.exact and not self.up_to_hyperparameters and not self.is_composition:
            lines.append("  nearest library methods:")
            for m in self.nearest:
                lines.append(f"    `{m.method}` (similarity {m.score:.2f})")
                lines += [f"      {d}" for d in m.differences]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""

        def dump(ms: tuple[Match, ...]) -> list[dict[str, Any]]:
            return [
                {
                    "method": m.method,
                    "score": round(m.score, 4),
                    "differences": list(m.differences),
                    "covers": list(m.covers),
                    "also": list(m.also),
                }
                for m in ms
            ]

        return {
            "method": self.method,
            "summary": self.summary(),
            "exact": dump(self.exact),
            "up_to_hyperparameters": dump(self.up_to_hyperparameters),
            "composition": dump(self.composition),
            "is_composition": self.is_composition,
            "uncovered": list(self.uncovered),
            "nearest": dump(self.nearest),
        }


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"`{x}`" for x in items)


def _and(items: Iterable[str]) -> str:
    xs = [f"`{x}`" for x in items]
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


# ---------------------------------------------------------------------------------------------
# The library
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryMethod:
    """A library method with its fingerprint."""

    method: ir.Method
    graph: nx.DiGraph = field(compare=False)
    terms: nx.DiGraph = field(compare=False)
    path: str | None = None


def _entry(method: ir.Method, path: str | None = None) -> LibraryMethod:
    graph = fingerprint(method)
    return LibraryMethod(method, graph, term_graph(graph), path)


@functools.lru_cache(maxsize=8)
def _load_dir(directory: str, stamp: tuple[tuple[str, int], ...]) -> tuple[LibraryMethod, ...]:
    out: list[LibraryMethod] = []
    for name, _ in stamp:
        try:
            source = SourceFile.read(Path(directory) / name)
        except OSError:
            continue
        # without the claims check: a wrong `claim` says nothing about the structure
        lowered, diags = check_source(source, library=Path(directory))
        if any(d.severity is Severity.ERROR for d in diags):
            continue
        out.extend(_entry(low.method, str(Path(directory) / name)) for low in lowered)
    return tuple(out)


def load_library(
    library: str | Path | Iterable[ir.Method | Lowered] | None = None,
) -> tuple[LibraryMethod, ...]:
    """Library methods with fingerprints.

    Args:
        library: a directory of specs (default: the shipped library), or methods given
            directly. Specs with errors (other than contradicted claims) are left out.
    """
    if library is None:
        from kdspec._resources import library_dir

        library = library_dir()
    if isinstance(library, str | Path):
        directory = Path(library)
        stamp = tuple(
            (p.name, p.stat().st_mtime_ns) for p in sorted(directory.glob("*.kd")) if p.is_file()
        )
        return _load_dir(str(directory), stamp)
    out = []
    for item in library:
        method = item if isinstance(item, ir.Method) else item.method
        out.append(_entry(method))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def _hp_differences(spec: nx.DiGraph, lib: nx.DiGraph, mapping: dict[str, str]) -> list[str]:
    out = []
    for n_spec, n_lib in sorted(mapping.items(), key=lambda kv: kv[1]):
        a, b = dict(lib.nodes[n_lib]["hp"]), dict(spec.nodes[n_spec]["hp"])
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(
                    f"{lib.nodes[n_lib]['text'].split(':')[0]} {key}: "
                    f"{_show(a.get(key))} -> {_show(b.get(key))}"
                )
    return out


def _show(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return "-" if v is None else str(v)


class _OverBudget(Exception):
    """A graph match made more comparisons than :data:`_MATCH_BUDGET`."""


def _budgeted(match: Any) -> Any:
    calls = 0

    def counted(a: dict[str, Any], b: dict[str, Any]) -> bool:
        nonlocal calls
        calls += 1
        if calls > _MATCH_BUDGET:
            raise _OverBudget
        return bool(match(a, b))

    return counted


def _exact_match(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["sig"] == b["sig"] and a["hp"] == b["hp"]


def _isomorphic(spec: nx.DiGraph, lib: nx.DiGraph) -> list[str] | None:
    """None if the structures differ; else the fewest hyperparameter differences found."""
    if Counter(d["sig"] for _, d in spec.nodes(data=True)) != Counter(
        d["sig"] for _, d in lib.nodes(data=True)
    ) or Counter(_edge_sigs(spec, "sig")) != Counter(_edge_sigs(lib, "sig")):
        return None
    try:
        exact = isomorphism.DiGraphMatcher(
            spec, lib, node_match=_budgeted(_exact_match), edge_match=_sig_match
        )
        if exact.is_isomorphic():
            return []
    except _OverBudget:
        pass
    gm = isomorphism.DiGraphMatcher(
        spec, lib, node_match=_budgeted(_sig_match), edge_match=_sig_match
    )
    best: list[str] | None = None
    try:
        for k, mapping in enumerate(gm.isomorphisms_iter()):
            diffs = _hp_differences(spec, lib, mapping)
            if best is None or len(diffs) < len(best):
                best = diffs
            if not best or k >= _MAX_ISOMORPHISMS:
                break
    except _OverBudget:
        pass
    return best


def _edge_sigs(g: nx.DiGraph, attr: str) -> list[object]:
    return [(g.nodes[u][attr], d["sig"], g.nodes[v][attr]) for u, v, d in g.edges(data=True)]


def _transfers(g: nx.DiGraph) -> list[str]:
    return [n for n, d in g.nodes(data=True) if d["kind"] == "term" and d["sig"][1] == "transfer"]


def term_graph(g: nx.DiGraph) -> nx.DiGraph:
    """A fingerprint with each term's sides and taps folded into the term (for embeddings).

    The term's ``loose`` signature takes its sides' and taps' signatures; an edge from a role
    (or ensemble, or view) to a tap becomes an edge to the term, labelled with the side and
    the tap. Far fewer nodes and symmetries than the full fingerprint, same information.
    """
    out = nx.DiGraph(name=g.name)
    for n, d in g.nodes(data=True):
        if d["kind"] not in ("side", "tap"):
            out.add_node(n, **d)

    def edge(u: str, v: str, sig: tuple[object, ...]) -> None:
        if out.has_edge(u, v):
            sig = tuple(sorted({*out.edges[u, v]["sig"], *sig}, key=repr))
        out.add_edge(u, v, sig=sig)

    parts: dict[str, list[object]] = {}
    for u, v, d in g.edges(data=True):
        ku, kv = g.nodes[u]["kind"], g.nodes[v]["kind"]
        if ku not in ("side", "tap") and kv not in ("side", "tap"):
            edge(u, v, d["sig"])
        elif ku == "side":
            taps = sorted(repr(g.nodes[t]["sig"]) for t in g.predecessors(u))
            parts.setdefault(v, []).append((repr(g.nodes[u]["sig"]), tuple(taps)))
        elif kv == "tap":
            side = next(iter(g.successors(v)))
            term = next(iter(g.successors(side)))
            label = (d["sig"], g.nodes[side]["sig"][1], repr(g.nodes[v]["sig"]))
            edge(u, term, (repr(label),))
    for term, ps in parts.items():
        out.nodes[term]["loose"] = (g.nodes[term]["loose"], tuple(sorted(ps, key=repr)))
    return out


def _shape(g: nx.DiGraph) -> Counter[object]:
    """A term graph's signatures (equal for structurally identical library methods)."""
    return Counter([("node", d["loose"]) for _, d in g.nodes(data=True)] + _edge_sigs(g, "loose"))


def _embeddings(spec: nx.DiGraph, lib: nx.DiGraph) -> set[str]:
    """Spec transfer terms covered by embeddings of a library method (empty: it does not embed).

    Both graphs are term graphs (:func:`term_graph`).
    """
    if not _transfers(lib):
        return set()
    need = Counter(d["loose"] for _, d in lib.nodes(data=True))
    have = Counter(d["loose"] for _, d in spec.nodes(data=True))
    if need - have or Counter(_edge_sigs(lib, "loose")) - Counter(_edge_sigs(spec, "loose")):
        return set()
    gm = isomorphism.DiGraphMatcher(
        spec, lib, node_match=_budgeted(_loose_match), edge_match=_sig_match
    )
    covered: set[str] = set()
    transfers = set(_transfers(spec))
    try:
        for k, mapping in enumerate(gm.subgraph_monomorphisms_iter()):
            covered |= {n for n in mapping if n in transfers}
            if k >= _MAX_EMBEDDINGS:
                break
    except _OverBudget:
        pass
    return covered


def _term_parts(g: nx.DiGraph, term: str) -> dict[str, object]:
    """A term's structure, part by part, with the text of each side (for near misses)."""
    sig = g.nodes[term]["sig"]
    parts: dict[str, object] = {
        "kind": sig[1],
        "loss": sig[2],
        "map": sig[3] or "none",
        "knowledge": " | ".join(sig[4]) or "none",
        "schedule": ", ".join(sig[5]) or "none",
    }
    texts: dict[str, str] = {}
    for side in g.predecessors(term):
        d = g.nodes[side]
        if d["kind"] != "side":
            continue
        taps = tuple(sorted(str(g.nodes[t]["sig"][1:]) for t in g.predecessors(side)))
        parts[d["sig"][1]] = (d["sig"][2:], taps)
        texts[d["sig"][1]] = d["text"].split(" ", 2)[-1]
    parts["texts"] = texts
    return parts


def _near_differences(spec: nx.DiGraph, lib: nx.DiGraph, lib_name: str) -> list[str]:
    """Roles, terms, data and stages that differ; similar terms are paired and compared."""
    out: list[str] = []

    def others(g: nx.DiGraph) -> dict[object, list[str]]:
        found: dict[object, list[str]] = {}
        for _, d in g.nodes(data=True):
            if d["kind"] in ("role", "ensemble", "view", "subset"):
                found.setdefault(d["sig"], []).append(d["text"])
        return found

    a, b = others(lib), others(spec)
    gone: list[tuple[object, str]] = []
    new: list[tuple[object, str]] = []
    for key in sorted(set(a) | set(b), key=str):
        xs, ys = a.get(key, []), b.get(key, [])
        gone += [(key, text) for text in xs[len(ys) :]]
        new += [(key, text) for text in ys[len(xs) :]]
    # A role of the same kind in another state (a teacher made trainable) is one change.
    for key_a, text_a in list(gone):
        twin = next(
            (
                (k, t)
                for k, t in new
                if isinstance(k, tuple)
                and isinstance(key_a, tuple)
                and k[:2] == key_a[:2]
                and k[0] == "role"
            ),
            None,
        )
        if twin is not None:
            gone.remove((key_a, text_a))
            new.remove(twin)
            what = [
                f"{field} {x or 'unstated'} -> {y or 'unstated'}"
                for field, x, y in zip(
                    ("mode", "architecture", "initialised"),
                    key_a[2:],  # type: ignore[index]
                    twin[0][2:],
                    strict=False,
                )
                if x != y
            ]
            out.append(
                f"~ {text_a} (`{lib_name}`) vs {twin[1].split(' ', 1)[1]} (here): "
                + "; ".join(what)
            )
    out += [f"- only in `{lib_name}`: {text}" for _, text in gone]
    out += [f"+ only in this spec: {text}" for _, text in new]

    fields = ("loss", "map", "knowledge", "schedule", "source", "target")
    lib_terms = {n: _term_parts(lib, n) for n, d in lib.nodes(data=True) if d["kind"] == "term"}
    spec_terms = {n: _term_parts(spec, n) for n, d in spec.nodes(data=True) if d["kind"] == "term"}
    # Identical terms cancel out; the rest are paired by the number of equal parts.
    for n_lib in list(lib_terms):
        p = {k: v for k, v in lib_terms[n_lib].items() if k != "texts"}
        twins = [
            n for n, q in spec_terms.items() if {k: v for k, v in q.items() if k != "texts"} == p
        ]
        # Several structurally equal terms: the one that also reads the same taps.
        same_text = [n for n in twins if spec_terms[n]["texts"] == lib_terms[n_lib]["texts"]]
        twin = (same_text or twins or [None])[0]
        if twin is not None:
            del lib_terms[n_lib], spec_terms[twin]
    pairs = sorted(
        (
            (-sum(pa.get(f) == pb.get(f) for f in fields), na, nb)
            for na, pa in lib_terms.items()
            for nb, pb in spec_terms.items()
            if pa["kind"] == pb["kind"]
        ),
    )
    used_a: set[str] = set()
    used_b: set[str] = set()
    for neg_same, na, nb in pairs:
        if na in used_a or nb in used_b or -neg_same < 3:
            continue
        used_a.add(na)
        used_b.add(nb)
        pa, pb = lib_terms[na], spec_terms[nb]
        changes = []
        for f in fields:
            if pa.get(f) != pb.get(f):
                if f in ("source", "target"):
                    ta = pa["texts"].get(f, "-")  # type: ignore[attr-defined]
                    tb = pb["texts"].get(f, "-")  # type: ignore[attr-defined]
                    changes.append(f"{f} {ta} -> {tb}")
                else:
                    changes.append(f"{f} {pa.get(f)} -> {pb.get(f)}")
        out.append(
            f"~ {lib.nodes[na]['text'].split(':')[0]} (`{lib_name}`) vs "
            f"{spec.nodes[nb]['text'].split(':')[0].split(' ', 1)[1]} (here): {'; '.join(changes)}"
        )
    out += [f"- only in `{lib_name}`: {lib.nodes[n]['text']}" for n in lib_terms if n not in used_a]
    out += [f"+ only in this spec: {spec.nodes[n]['text']}" for n in spec_terms if n not in used_b]
    n_a = sum(1 for _, d in lib.nodes(data=True) if d["kind"] == "stage")
    n_b = sum(1 for _, d in spec.nodes(data=True) if d["kind"] == "stage")
    if n_a != n_b:
        out.append(f"~ stages: {n_a} in `{lib_name}`, {n_b} here")
    order = {"-": 0, "+": 1, "~": 2}
    return sorted(out, key=lambda s: (order.get(s[0], 3), s))


def _jaccard(a: Counter[object], b: Counter[object]) -> float:
    union = sum((a | b).values())
    return sum((a & b).values()) / union if union else 1.0


def identify(
    lowered: Lowered | ir.Method,
    library: str | Path | Sequence[ir.Method | Lowered] | None = None,
) -> Identification:
    """Identify a method against the library (see the module docstring).

    Args:
        lowered: the method (a :class:`kdspec.ir.Lowered` or an IR method).
        library: a directory of specs, methods, or None for the shipped library.

    Returns:
        Exact matches, matches up to hyperparameters, the library methods it is composed of
        (with the transfers each covers) and the nearest methods with what differs.
    """
    method = lowered if isinstance(lowered, ir.Method) else lowered.method
    spec = fingerprint(method)
    lib = load_library(library)
    exact: list[Match] = []
    close: list[Match] = []
    for entry in lib:
        diffs = _isomorphic(spec, entry.graph)
        if diffs is None:
            continue
        if diffs:
            close.append(Match(entry.method.name, "hyperparameters", 1.0, tuple(diffs), entry.path))
        else:
            exact.append(Match(entry.method.name, "exact", 1.0, (), entry.path))
    sigs = _signatures(spec)
    scored = sorted(
        ((_jaccard(sigs, _signatures(e.graph)), e) for e in lib),
        key=lambda se: (-se[0], se[1].method.name),
    )
    nearest = tuple(
        Match(
            e.method.name,
            "nearest",
            score,
            tuple(_near_differences(spec, e.graph, e.method.name)),
            e.path,
        )
        for score, e in scored[:_NEAREST]
    )
    parts: list[Match] = []
    uncovered: list[str] = []
    if not exact and not close:
        transfers = set(_transfers(spec))
        spec_terms = term_graph(spec)
        candidates = []
        for entry in lib:
            covered = _embeddings(spec_terms, entry.terms)
            if covered:
                candidates.append((covered, entry))
        candidates.sort(
            key=lambda ce: (-len(ce[0]), -ce[1].graph.number_of_nodes(), ce[1].method.name)
        )
        left = set(transfers)
        for covered, entry in candidates:
            if covered & left:
                left -= covered
                shape = _shape(entry.terms)
                also = tuple(
                    e.method.name
                    for c, e in candidates
                    if e is not entry and c == covered and _shape(e.terms) == shape
                )
                names = tuple(sorted(n.split(":", 1)[1] for n in covered))
                parts.append(
                    Match(entry.method.name, "part", 1.0, (), entry.path, covers=names, also=also)
                )
            if not left:
                break
        uncovered = sorted(n.split(":", 1)[1] for n in left) if parts else []
    return Identification(
        method.name,
        tuple(exact),
        tuple(close),
        tuple(parts),
        tuple(uncovered),
        nearest,
    )


__all__ = [
    "Identification",
    "LibraryMethod",
    "Match",
    "fingerprint",
    "identify",
    "load_library",
    "term_graph",
    "term_text",
]
