"""Classify a method along the dimensions of the KD surveys, from its graph alone.

Nothing here looks at a method's name: every label is derived from the method graph
(:class:`kdspec.graph.KdGraph`) and comes with the graph facts it rests on, so a label can be
checked (``claim``, KD311), explained (``kdspec taxonomy --why``) and argued with. Labels are
name-free, so renaming identifiers or reordering statements never changes them; the evidence
cites names.

The rules (see ``docs/taxonomy.md`` for where they differ from the surveys):

- **scheme**, per teaching edge, by "is the teacher updated together with the student": a
  teacher trained in a stage where it teaches a learner is *online*; one frozen whenever it
  teaches (pre-trained, or trained in an earlier stage only) is *offline*; a role teaching itself
  (exits, other views), a moving average or snapshot of the learner and a virtual teacher are
  *self*; generations linked by ``handoff`` (Born-Again) are *offline* for each generation and
  *self* as generations.
- **knowledge**, per transfer: *relation* when samples are related to each other (similarity,
  distances, angles, affinities, contrastive losses, Pearson over the batch) or layers to each
  other (FSP); else *response* when both sides are read at the output layer (logits, the
  whole output, classifier exits); else *feature* (intermediate taps matched element-wise).

Example:
    >>> from kdspec.api import load_method
    >>> from kdspec.graph import build_graph
    >>> c = classify(build_graph(load_method("hinton").method))
    >>> c.scheme, c.knowledge, c.topology
    (('offline',), ('response',), 'single_teacher')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

from kdspec.graph import build_graph, types
from kdspec.ir import models as ir
from kdspec.ir.canonical import canonicalize, power_of
from kdspec.ir.evaluate import EvalError, evaluate
from kdspec.ir.printer import expr_text
from kdspec.vocabulary import FUNCTIONS

if TYPE_CHECKING:
    from kdspec.graph.build import KdGraph

Path = tuple[object, ...]

DIMENSIONS = (
    "roles",
    "topology",
    "teacher_state",
    "scheme",
    "knowledge",
    "taps",
    "mapping",
    "transforms",
    "adapters",
    "losses",
    "weights",
    "stages",
    "data",
    "ground_truth",
    "architecture",
    "initialisation",
    "algorithm",
)
CATEGORIES = ("response", "feature", "relation")
SCHEMES = ("offline", "online", "self")

# Transforms that relate the samples of a batch to each other.
_SAMPLE_RELATIONS = frozenset({"similarity", "distances", "angles", "pkt_affinity"})
# Transforms with a temperature (a weight scaled by its square keeps gradients in size).
_TEMPERATURED = frozenset({"softmax", "log_softmax", "binary_target", "non_target"})
_OUTPUT_POINTS = frozenset({"logits", "output"})
_MODE_WORDS = {
    "ema": "a moving average",
    "snapshot": "a snapshot",
    "virtual": "virtual (no network)",
}
_MAPPINGS = {
    "one_to_one": "one-to-one",
    "uniform": "skip (uniform)",
    "last": "last-k",
    "first": "first-k",
    "all_pairs": "all pairs",
}


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One graph fact, as a short clause, and the IR path of the part it cites."""

    text: str
    path: Path = ()


@dataclass(frozen=True)
class Finding:
    """One dimension of the classification.

    Attributes:
        dimension: one of :data:`DIMENSIONS`.
        value: a name-free summary (the same for a renamed or reordered spec).
        labels: name-free labels; for the claimable dimensions, the values a claim must list.
        evidence: every fact the value rests on, citing names.
        support: for each label, the evidence that produced it (used by KD311 messages).
    """

    dimension: str
    value: str
    labels: tuple[str, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    support: tuple[tuple[str, tuple[Evidence, ...]], ...] = ()

    def why(self, label: str) -> tuple[Evidence, ...]:
        """The evidence for one label (empty if the label was not found)."""
        return dict(self.support).get(label, ())


@dataclass(frozen=True)
class TeachingEdge:
    """One ``teaches`` edge of the graph, read for the taxonomy.

    ``relation``: ``external`` (another network), ``self`` (the role teaches itself), ``ema`` /
    ``snapshot`` (a copy of the learner), ``generation`` (linked to the learner by ``handoff``)
    or ``virtual`` (no network).
    """

    teacher: str
    student: str
    term: str
    relation: str
    self_kind: str
    state: str
    schemes: tuple[str, ...]
    reasons: tuple[Evidence, ...]


@dataclass(frozen=True)
class TermKnowledge:
    """The knowledge one transfer carries: category, finer kind, and why."""

    term: str
    category: str
    kind: str
    reason: Evidence
    source_points: tuple[str, ...]
    target_points: tuple[str, ...]
    mapping: str


@dataclass(frozen=True)
class Classification:
    """A method classified along every dimension of :data:`DIMENSIONS`."""

    method: str
    findings: tuple[Finding, ...]
    edges: tuple[TeachingEdge, ...] = ()
    terms: tuple[TermKnowledge, ...] = field(default=())

    def __getitem__(self, dimension: str) -> Finding:
        for f in self.findings:
            if f.dimension == dimension:
                return f
        raise KeyError(dimension)

    @property
    def scheme(self) -> tuple[str, ...]:
        """``offline`` / ``online`` / ``self`` (several when teaching edges differ)."""
        return self["scheme"].labels

    @property
    def knowledge(self) -> tuple[str, ...]:
        """The knowledge categories of the transfers, in the order response, feature, relation."""
        return self["knowledge"].labels

    @property
    def topology(self) -> str:
        """``single_teacher``, ``multi_teacher``, ``chain``, ``mutual``, ``self`` or ``none``."""
        return self["topology"].labels[0]

    @property
    def stages(self) -> str:
        """``single`` or ``multi``."""
        return self["stages"].labels[0]

    def claim_values(self, dimension: str) -> tuple[str, ...]:
        """The values a ``claim`` on ``dimension`` must list to agree with the graph."""
        return self[dimension].labels

    def labels(self) -> dict[str, str]:
        """Dimension -> name-free value (what renaming and reordering must keep)."""
        return {f.dimension: f.value for f in self.findings}

    def legend(self) -> str:
        """A few lines for pictures: scheme, knowledge, topology, stages."""
        lines = [
            f"scheme: {', '.join(self.scheme) or 'none'}",
            f"knowledge: {self['knowledge'].value}",
            f"topology: {self.topology} ({self['roles'].value})",
            f"stages: {self['stages'].value}",
        ]
        return "\n".join(lines)

    def to_dict(self, evidence: bool = True) -> dict[str, Any]:
        """JSON-ready: every dimension's value and labels (and evidence)."""
        dims: dict[str, Any] = {}
        for f in self.findings:
            entry: dict[str, Any] = {"value": f.value, "labels": list(f.labels)}
            if evidence:
                entry["evidence"] = [e.text for e in f.evidence]
            dims[f.dimension] = entry
        return {"method": self.method, "dimensions": dims}


# ---------------------------------------------------------------------------------------------
# Small helpers over the IR
# ---------------------------------------------------------------------------------------------


def _heads(e: ir.Expr | None, m: ir.Method) -> list[str]:
    """Learned classifier heads (exits, branches) an expression applies."""
    return [
        f
        for f in types.uses_adapter(e, m)
        if FUNCTIONS[f].returns == "logits" and FUNCTIONS[f].family == "head"
    ]


def point_text(tap: ir.Tap) -> str:
    """A tap without its role: ``logits``, ``stage[2]``, ``stage[..-2]``, ``"layer3.0"``."""
    text = types.tap_text(tap.model_copy(update={"role": "\x00", "view": None}))
    text = text.removeprefix("\x00").removeprefix(".")
    return text or "output"


def _side_points(e: ir.Expr | None, m: ir.Method, learner: bool = False) -> tuple[str, ...]:
    points = tuple(dict.fromkeys(point_text(t) for t, _ in types.taps(e, m)))
    if learner and _heads(e, m):
        return tuple(f"exits on {p}" for p in points)
    return points


def _num(e: ir.Expr | None, params: dict[str, ir.Expr]) -> float | None:
    if e is None:
        return None
    try:
        v = evaluate(e, params)
    except EvalError:
        return None
    return float(v) if isinstance(v, int | float) else None


def _kwarg(call: ir.Call, name: str, params: dict[str, ir.Expr]) -> object:
    """A call's keyword value, evaluated, falling back to the vocabulary default."""
    if name in call.kwargs:
        try:
            return evaluate(call.kwargs[name], params)
        except EvalError:
            return expr_text(call.kwargs[name])
    fn = FUNCTIONS.get(call.func)
    param = fn.params.get(name) if fn else None
    return None if param is None else param.default


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"`{x}`" for x in items)


def _sorted_unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(items)))


# ---------------------------------------------------------------------------------------------
# Who teaches whom
# ---------------------------------------------------------------------------------------------


def _lineage(name: str, m: ir.Method) -> list[str]:
    """The roles a moving average or snapshot is copied from, nearest first."""
    out: list[str] = []
    role = m.role(name)
    while role is not None and role.mode in ("ema", "snapshot") and role.source:
        if role.source in out or role.source == name:
            break
        out.append(role.source)
        role = m.role(role.source)
    return out


def _handoff_linked(a: str, b: str, m: ir.Method) -> tuple[str, str] | None:
    """The stage and handoff text that link two roles (directly or through other handoffs)."""
    g = nx.Graph()
    first: dict[frozenset[str], tuple[str, str]] = {}
    for stage in m.stages:
        for src, dst in stage.handoffs:
            g.add_edge(src, dst)
            first.setdefault(frozenset((src, dst)), (stage.name, f"handoff {src} -> {dst}"))
    if a in g and b in g and nx.has_path(g, a, b):
        path = nx.shortest_path(g, a, b)
        return first[frozenset(path[:2])]
    return None


def _self_kind(term: ir.Term, m: ir.Method) -> str:
    """What differs between the two sides when a role teaches itself."""
    src = types.taps(term.source, m)
    dst = types.taps(term.target, m)
    src_views = {t.view for t, _ in src}
    dst_views = {t.view for t, _ in dst}
    if src_views != dst_views:
        funcs = {
            part.func
            for part in m.data
            if part.name in (src_views | dst_views) and part.kind == "view"
        }
        return "paired samples" if "same_class" in funcs else "other views"
    if len({point_text(t) for t, _ in src}) >= 2 and types.uses_adapter(term.source, m):
        return "own ensemble"
    if _heads(term.target, m):
        return "exits"
    if types.expr_kind(term.target, m) == "logits" and not all(
        t.point in _OUTPUT_POINTS for t, _ in dst
    ):
        return "exits"
    return "deeper layers"


def _stage_word(stage: ir.Stage, m: ir.Method) -> str:
    return f" in stage `{stage.name}`" if m.stages else ""


def same_architecture(a: str, b: str, m: ir.Method) -> bool:
    """Whether the spec states that two roles share one architecture (``like``, no size)."""
    ra, rb = m.role(a), m.role(b)
    return (ra is not None and ra.like == b and ra.size is None) or (
        rb is not None and rb.like == a and rb.size is None
    )


def _like_text(a: str, b: str, m: ir.Method) -> str:
    ra = m.role(a)
    return f"`{a} like {b}`" if ra is not None and ra.like == b else f"`{b} like {a}`"


def _in_group(term: ir.Term, role: str, m: ir.Method) -> bool:
    """The term's teacher side reads an ensemble with ``role`` and at least one other member."""
    for tap in ir.find_all(term.source, ir.Tap, m):
        ens = m.ensemble(tap.role)
        if ens is not None and role in ens.members and len(set(ens.members)) > 1:
            return True
    return False


def _edges(kg: KdGraph) -> list[TeachingEdge]:
    m = kg.method
    stages = m.effective_stages()
    trained = {st.name: kg.trained_roles(st) for st in stages}
    active = {st.name: {t.name for t in kg.active_terms(st)} for st in stages}
    out: list[TeachingEdge] = []
    ever_trained = set().union(*trained.values())
    for u, v, d in kg.edges_of("teaches"):
        term = m.term(d["term"])
        if term is None:
            continue
        s = v.split(":", 1)[1]
        learner = m.role(s)
        if u == v and _in_group(term, s, m):
            # The learner's own share of an ensemble of peers that teaches it (online KD from
            # the group's average) is not self-distillation; its peers' edges carry the scheme.
            continue
        if learner is not None and learner.mode != "trained" and s not in ever_trained:
            # A role no stage updates learns nothing: the term trains adapters only (FT's
            # paraphraser reconstructing the frozen teacher's features).
            continue
        t = u.split(":", 1)[1] if u.startswith("role:") else None
        role = m.role(t) if t else None
        path: Path = ("term", term.name)
        on = [st for st in stages if term.name in active[st.name]]
        co = [st for st in on if t in trained[st.name] and s in trained[st.name]]
        earlier = [
            st for st in stages if t in trained[st.name] and term.name not in active[st.name]
        ]
        reasons: list[Evidence] = []
        schemes: tuple[str, ...]
        self_kind = ""
        if t is None or (role is not None and role.mode == "virtual"):
            who = f"`{t}` is a virtual teacher" if t else f"`{term.name}` is made from the labels"
            relation, state, schemes = "virtual", "virtual", ("self",)
            reasons.append(
                Evidence(
                    f"{who} (a hand-designed distribution, no network): teacher-free, "
                    "filed under self-distillation",
                    ("role", t) if t else path,
                )
            )
        elif t == s:
            self_kind = _self_kind(term, m)
            relation, state, schemes = "self", "co_trained", ("self",)
            what = {
                "exits": "its auxiliary classifiers (exits) learn from its own output",
                "own ensemble": "it learns from an ensemble built from its own outputs",
                "paired samples": "it learns from its own prediction on a paired sample",
                "other views": "it learns from its own prediction on another view",
                "deeper layers": "its shallower layers learn from its deeper ones",
            }[self_kind]
            reasons.append(Evidence(f"`{s}` teaches itself in `{term.name}`: {what}", path))
        elif s in _lineage(t, m):
            relation = "ema" if role is not None and role.mode == "ema" else "snapshot"
            state = "moving_average" if relation == "ema" else "snapshot"
            schemes = ("self",)
            if relation == "ema":
                text = (
                    f"teacher `{t}` is an exponential moving average of `{s}` (the same "
                    f"network's weights), so `{s}` teaches itself; `{t}` moves with every step "
                    f"of `{s}`, which the update rule alone would call online"
                )
            else:
                text = f"teacher `{t}` is a frozen snapshot of `{s}`: the network teaches itself"
            reasons.append(Evidence(text, ("role", t)))
        else:
            link = _handoff_linked(t, s, m)
            copy = not link and t is not None and same_architecture(t, s, m)
            relation = "generation" if link else "copy" if copy else "external"
            if role is not None and role.mode == "ema":
                state = "moving_average"
            elif role is not None and role.mode == "snapshot":
                state = "snapshot"
            elif link:
                state = "previous_generation"
            elif co:
                state = "co_trained"
            elif earlier:
                state = "trained_earlier"
            else:
                state = "pretrained_frozen"
            if co or (role is not None and role.mode == "ema"):
                where = _stage_word(co[0], m) if co else ""
                why = (
                    f"teacher `{t}` is trained{where} together with `{s}`"
                    if co
                    else f"teacher `{t}` is a moving average of `{role.source if role else '?'}`, "
                    f"updated while `{s}` learns"
                )
                reasons.append(
                    Evidence(why, ("stage", co[0].name) if co and m.stages else ("role", t))
                )
                schemes = ("online",)
            else:
                if earlier:
                    why = (
                        f"teacher `{t}` is trained only in stage `{earlier[0].name}`, and frozen "
                        f"when `{s}` learns from it"
                    )
                else:
                    why = f"teacher `{t}` is frozen whenever `{s}` learns from it"
                reasons.append(Evidence(why, ("role", t)))
                schemes = ("offline",)
            if link:
                stage_name, text = link
                reasons.append(
                    Evidence(
                        f"`{t}` and `{s}` are generations of one architecture (`{text}` in stage "
                        f"`{stage_name}`): self-distillation across generations (Gou et al. "
                        "call Born-Again self-distillation in Sec. 3.3 but list it as online "
                        "multi-teacher in Table 3; each generation's teacher is frozen while "
                        "its student trains, so each step is offline)",
                        ("stage", stage_name),
                    )
                )
                schemes = (*schemes, "self")
            elif copy:
                reasons.append(
                    Evidence(
                        f"teacher `{t}` has the architecture of `{s}` (stated: "
                        f"{_like_text(t, s, m)}), trained before it teaches: the network "
                        "teaches a fresh copy of itself, self-distillation in Gou et al.'s sense "
                        "(Tf-KD's self-training); each step is still "
                        f"{'online' if 'online' in schemes else 'offline'}",
                        ("role", t),
                    )
                )
                schemes = (*schemes, "self")
        out.append(
            TeachingEdge(
                teacher=t or "labels",
                student=s,
                term=term.name,
                relation=relation,
                self_kind=self_kind,
                state=state,
                schemes=schemes,
                reasons=tuple(reasons),
            )
        )
    return out


_SELF_LIKE = frozenset({"self", "ema", "snapshot", "generation", "virtual", "copy"})


def _roles_and_topology(kg: KdGraph, edges: list[TeachingEdge]) -> tuple[Finding, Finding]:
    m = kg.method
    ev: list[Evidence] = []
    by_kind: dict[str, list[ir.Role]] = {}
    for role in m.roles:
        by_kind.setdefault(role.kind, []).append(role)
    parts: list[str] = []
    for kind in ("teacher", "assistant", "student", "peer"):
        roles = by_kind.get(kind, [])
        if not roles:
            continue
        modes = sorted({r.mode for r in roles} - {"frozen" if kind == "teacher" else "trained"})
        mode_text = f" ({', '.join(m_.replace('ema', 'moving average') for m_ in modes)})"
        parts.append(_plural(len(roles), kind) + (mode_text if modes else ""))
        for r in roles:
            mode = _MODE_WORDS.get(r.mode, r.mode)
            extra = f" of `{r.source}`" if r.source else ""
            ev.append(Evidence(f"{kind} `{r.name}` is {mode}{extra}", ("role", r.name)))
    for ens in m.ensembles:
        how = "weighted mean" if ens.weights else "mean"
        parts.append(f"ensemble ({how} of {len(ens.members)})")
        ev.append(
            Evidence(
                f"ensemble `{ens.name}` combines {_names(ens.members)} by {how}"
                + (f" (weights {expr_text(ens.weights)})" if ens.weights else ""),
                ("ensemble", ens.name),
            )
        )

    external = [e for e in edges if e.relation not in _SELF_LIKE]
    ext = nx.DiGraph()
    for e in external:
        ext.add_edge(e.teacher, e.student, term=e.term)
    mutual = sorted({tuple(sorted((a, b))) for a, b in ext.edges if a != b and ext.has_edge(b, a)})
    for a, b in mutual:
        ev.append(Evidence(f"`{a}` and `{b}` teach each other (a mutual pair)", ()))
    chain_g = ext.copy()
    chain_g.remove_edges_from([(a, b) for a, b in mutual] + [(b, a) for a, b in mutual])
    chain = _longest_path(chain_g)
    if len(chain) >= 3:
        ev.append(
            Evidence(
                "chain " + " -> ".join(f"`{x}`" for x in chain) + f" ({len(chain) - 1} hops, "
                f"{_plural(len(chain) - 2, 'intermediate role')})",
                (),
            )
        )
        parts.append(f"chain of {len(chain) - 1} hops")
    teachers_of: dict[str, set[str]] = {}
    for e in external:
        teachers_of.setdefault(e.student, set()).add(e.teacher)
    multi = {s: ts for s, ts in teachers_of.items() if len(ts) >= 2 and not mutual}
    for s, ts in sorted(multi.items()):
        ev.append(Evidence(f"`{s}` learns from {len(ts)} teachers: {_names(sorted(ts))}", ()))
    self_edges = [e for e in edges if e.relation in _SELF_LIKE]
    self_kinds = sorted(
        {
            e.self_kind
            or {
                "ema": "moving average",
                "snapshot": "snapshot",
                "generation": "generations",
                "virtual": "virtual teacher",
                "copy": "pre-trained copy",
            }[e.relation]
            for e in self_edges
        }
    )
    if self_edges:
        parts.append("self: " + ", ".join(self_kinds))
    for e in self_edges:
        ev.append(e.reasons[0])
    if mutual:
        topo = "mutual"
        why = Evidence(f"`{mutual[0][0]}` and `{mutual[0][1]}` teach each other", ())
    elif len(chain) >= 3:
        topo = "chain"
        why = Evidence(
            " teaches ".join(f"`{x}`" for x in chain[:2])
            + f", which teaches `{chain[2]}` (a chain of {len(chain) - 1} hops)",
            (),
        )
    elif multi:
        s, ts = sorted(multi.items())[0]
        topo = "multi_teacher"
        why = Evidence(f"`{s}` learns from {len(ts)} teachers ({_names(sorted(ts))})", ())
    elif external:
        topo = "single_teacher"
        e = external[0]
        why = Evidence(f"`{e.student}` learns from one teacher, `{e.teacher}`", ())
    elif self_edges:
        topo = "self"
        why = self_edges[0].reasons[0]
    else:
        topo = "none"
        why = Evidence("no transfer: nothing teaches", ())
    if not edges:
        ev.append(why)
    roles_f = Finding("roles", "; ".join(parts) or "no roles", (), tuple(ev))
    topology = Finding("topology", topo, (topo,), (why,), ((topo, (why,)),))
    return roles_f, topology


def _longest_path(g: nx.DiGraph) -> list[str]:
    if g.number_of_nodes() == 0:
        return []
    if nx.is_directed_acyclic_graph(g):
        return list(nx.dag_longest_path(g))
    best: list[str] = []
    for a in sorted(g.nodes):
        for b in sorted(g.nodes):
            if a != b:
                for p in nx.all_simple_paths(g, a, b):
                    if len(p) > len(best):
                        best = list(p)
    return best


def _scheme_and_state(edges: list[TeachingEdge]) -> tuple[Finding, Finding]:
    support: dict[str, list[Evidence]] = {}
    states: dict[str, list[Evidence]] = {}
    ev: list[Evidence] = []
    for e in edges:
        for s in e.schemes:
            support.setdefault(s, []).append(e.reasons[-1 if s == "self" else 0])
        states.setdefault(e.state, []).append(
            Evidence(f"`{e.teacher}` -> `{e.student}` (`{e.term}`): {e.state}", ("term", e.term))
        )
        ev.extend(e.reasons)
    labels = tuple(s for s in SCHEMES if s in support)
    scheme = Finding(
        "scheme",
        ", ".join(labels) or "none",
        labels,
        tuple(dict.fromkeys(ev)) or (Evidence("no teaching edge"),),
        tuple((k, tuple(v)) for k, v in support.items()),
    )
    state_labels = _sorted_unique(states) or ("none",)
    state = Finding(
        "teacher_state",
        ", ".join(state_labels),
        state_labels,
        tuple(x for v in states.values() for x in v) or (Evidence("no term reads a teacher"),),
        tuple((k, tuple(v)) for k, v in states.items()),
    )
    return scheme, state


# ---------------------------------------------------------------------------------------------
# What knowledge, where, how
# ---------------------------------------------------------------------------------------------


def _mapping(term: ir.Term, m: ir.Method) -> str:
    if term.mapping:
        return _MAPPINGS.get(term.mapping, term.mapping)
    src = [t for t, _ in types.taps(term.source, m)]
    dst = [t for t, _ in types.taps(term.target, m)]
    if not src or not dst:
        return "single"
    loss = FUNCTIONS.get(term.loss.func)
    several = len(src) > 1 or len(dst) > 1 or any(t.is_range for t in (*src, *dst))
    if loss is not None and loss.learned and several:
        # A learned loss sees both sides whole, unpaired: it weighs every layer pair itself.
        return f"all pairs (weighed by `{term.loss.func}`)"
    if len(src) > 1 or len(dst) > 1:
        return "several taps"
    a, b = src[0], dst[0]
    if a.is_range and b.is_range:
        same = (a.first, a.last) == (b.first, b.last)
        return "one-to-one" if same else "cross-stage"
    if a.is_range or b.is_range:
        return "cross-stage"
    if a.point == b.point == "stage" and a.first != b.first:
        return "cross-stage"
    if a.point != b.point and not (a.point in _OUTPUT_POINTS and b.point in _OUTPUT_POINTS):
        return "cross-stage"
    return "single"


def _term_knowledge(term: ir.Term, m: ir.Method) -> TermKnowledge:
    params = m.params
    path: Path = ("term", term.name)
    pipeline = list(term.knowledge)
    side_calls = [c for e in (term.source, term.target) for c in ir.find_all(e, ir.Call, m)]
    funcs = [c.func for c in (*pipeline, *side_calls)]
    src_points = _side_points(term.source, m)
    dst_points = _side_points(term.target, m, learner=True)
    where = (
        f"`{expr_text(term.source)}` -> `{expr_text(term.target)}`"
        if term.source is not None
        else f"`{expr_text(term.target)}`"
    )
    loss = FUNCTIONS.get(term.loss.func)
    mapping = _mapping(term, m)

    def make(category: str, kind: str, text: str) -> TermKnowledge:
        return TermKnowledge(
            term.name, category, kind, Evidence(text, path), src_points, dst_points, mapping
        )

    rel = [f for f in funcs if f in _SAMPLE_RELATIONS]
    if rel:
        kinds = ", ".join(dict.fromkeys(FUNCTIONS[f].family for f in rel))
        return make(
            "relation",
            kinds,
            f"`{term.name}` relates samples to each other (`{'`, `'.join(dict.fromkeys(rel))}`: "
            f"{kinds}) read at {where}",
        )
    if loss is not None and loss.family == "contrastive":
        return make(
            "relation",
            "contrastive",
            f"`{term.name}` matches {where} contrastively (`{term.loss.func}`): each sample "
            "against the other samples of the batch",
        )
    if term.loss.func == "pearson" and _kwarg(term.loss, "dim", params) == 0:
        return make(
            "relation",
            "intra-class correlation",
            f"`{term.name}` correlates each class's predictions across the samples of the "
            f"batch (`pearson` with `dim=0`) at {where}",
        )
    within = [
        f"`{c.func}`"
        for c in (*pipeline, *side_calls)
        if c.func in FUNCTIONS and FUNCTIONS[c.func].returns == "gram"
    ]
    for call in (*pipeline, *side_calls):
        # A transform of two inputs (FSP between layers, MiniLM's and TinyBERT's token
        # relations) relates them to each other; an adapter fusing several taps (ReviewKD's
        # fusion, ONE's gate) does not make the knowledge relational.
        fn = FUNCTIONS.get(call.func)
        if fn is None or fn.category != "transform" or fn.inputs < 2:
            continue
        taps = [t for a in call.args for t, _ in types.taps(a, m)]
        points = list(dict.fromkeys(point_text(t) for t in taps))
        if len({t.model_copy(update={"role": ""}) for t in taps}) < 2:
            # One rule for every relation inside one tap (a channel Gram matrix, the token
            # relations of one layer): it describes that tap's features, sample by sample.
            within.append(f"`{call.func}` of {_names(points) or 'its input'}")
            continue
        return make(
            "relation",
            fn.family or call.func,
            f"`{term.name}` relates two inputs to each other (`{call.func}` of "
            f"{_names(points) or 'its inputs'})",
        )
    src_kind = types.expr_kind(term.source, m)
    dst_kind = types.expr_kind(term.target, m)
    src_out = bool(src_points) and all(p in _OUTPUT_POINTS for p in src_points)
    src_out = src_out or (not src_points and term.source is None)
    dst_out = dst_kind == "logits" or (
        bool(dst_points) and all(p in _OUTPUT_POINTS for p in dst_points)
    )
    if (src_out or src_kind == "logits") and dst_out:
        fams = [
            FUNCTIONS[c.func].family
            for c in pipeline
            if c.func in FUNCTIONS and FUNCTIONS[c.func].family
        ]
        kind = ", ".join(dict.fromkeys(fams)) or "raw logits"
        if term.loss.func == "pearson":
            kind = "inter-class correlation"
        exits = bool(_heads(term.target, m))
        how = "to auxiliary classifiers (exits)" if exits else "at the output layer"
        return make(
            "response",
            kind,
            f"`{term.name}` reads predictions ({where}) {how} and relates no samples",
        )
    fams = [
        FUNCTIONS[c.func].family
        for c in (*pipeline, *side_calls)
        if c.func in FUNCTIONS
        and FUNCTIONS[c.func].category == "transform"
        and FUNCTIONS[c.func].family
    ]
    if fams:
        kind = ", ".join(dict.fromkeys(fams))
    elif loss is not None and loss.family == "variational":
        kind = "variational (Gaussian)"
    else:
        kind = "raw features"
    if within:
        return make(
            "feature",
            kind,
            f"`{term.name}` relates the elements of one tap to each other, sample by sample "
            f"({', '.join(dict.fromkeys(within))}; {where}, `{term.loss.func}`): features of "
            "that layer, not relations between samples or layers",
        )
    return make(
        "feature",
        kind,
        f"`{term.name}` matches intermediate features element-wise ({where}, `{term.loss.func}`)",
    )


def _knowledge(terms: list[TermKnowledge]) -> Finding:
    support: dict[str, list[Evidence]] = {}
    kinds: dict[str, list[str]] = {}
    for tk in terms:
        support.setdefault(tk.category, []).append(tk.reason)
        kinds.setdefault(tk.category, []).append(tk.kind)
    labels = tuple(c for c in CATEGORIES if c in support)
    value = "; ".join(f"{c} ({', '.join(sorted(set(kinds[c])))})" for c in labels) or "none"
    return Finding(
        "knowledge",
        value,
        labels,
        tuple(tk.reason for tk in terms) or (Evidence("no transfer term"),),
        tuple((k, tuple(v)) for k, v in support.items()),
    )


def _taps_and_mapping(terms: list[TermKnowledge], m: ir.Method) -> tuple[Finding, Finding]:
    tap_vals, tap_ev, map_vals, map_ev = [], [], [], []
    for tk in terms:
        term = m.term(tk.term)
        assert term is not None
        src = ", ".join(tk.source_points) or "labels"
        dst = ", ".join(tk.target_points)
        tap_vals.append(f"{src} -> {dst}")
        tap_ev.append(
            Evidence(
                f"`{tk.term}`: teacher side `{expr_text(term.source)}`, student side "
                f"`{expr_text(term.target)}`",
                ("term", tk.term),
            )
        )
        map_vals.append(tk.mapping)
        how = f"`map {term.mapping}`" if term.mapping else "no `map`: read from the taps"
        map_ev.append(Evidence(f"`{tk.term}`: {tk.mapping} ({how})", ("term", tk.term)))
    none = (Evidence("no transfer term"),)
    taps = Finding("taps", "; ".join(_sorted_unique(tap_vals)) or "none", (), tuple(tap_ev) or none)
    mapping = Finding(
        "mapping", ", ".join(_sorted_unique(map_vals)) or "none", (), tuple(map_ev) or none
    )
    return taps, mapping


def _transforms_and_adapters(m: ir.Method) -> tuple[Finding, Finding]:
    t_vals, t_ev, a_vals, a_ev = [], [], [], []
    for term in m.terms:
        if term.kind != "transfer":
            continue
        sides: dict[str, list[str]] = {}
        adapters: dict[str, list[str]] = {}
        for call in term.knowledge:
            fn = FUNCTIONS.get(call.func)
            bucket = adapters if fn is not None and fn.category == "adapter" else sides
            bucket.setdefault(call.func, []).append("both sides")
        for side, e in (("teacher side", term.source), ("student side", term.target)):
            for call in ir.find_all(e, ir.Call, m):
                fn = FUNCTIONS.get(call.func)
                if fn is None or fn.category not in ("transform", "adapter", "combine"):
                    continue
                if fn.category == "adapter" and call.func != "identity":
                    adapters.setdefault(call.func, []).append(side)
                elif fn.category != "adapter":
                    sides.setdefault(call.func, []).append(side)
        for func, where in sides.items():
            text = f"{func} ({', '.join(dict.fromkeys(where))})"
            t_vals.append(text)
            t_ev.append(Evidence(f"`{term.name}`: {text}", ("term", term.name)))
        loss = FUNCTIONS.get(term.loss.func)
        if loss is not None and loss.learned:
            adapters.setdefault(term.loss.func, []).append("inside the loss")
        for func, where in adapters.items():
            fn = FUNCTIONS[func]
            trained = "trained" if fn.learned else "fixed"
            family = "learned loss" if fn.category == "loss" else fn.family or "adapter"
            text = f"{func} ({family}, {', '.join(dict.fromkeys(where))}, {trained})"
            a_vals.append(text)
            a_ev.append(Evidence(f"`{term.name}`: {text}", ("term", term.name)))
    transforms = Finding(
        "transforms",
        "; ".join(_sorted_unique(t_vals)) or "none",
        (),
        tuple(t_ev) or (Evidence("no transform: the taps are matched as read"),),
    )
    adapters_f = Finding(
        "adapters",
        "; ".join(_sorted_unique(a_vals)) or "none",
        (),
        tuple(a_ev) or (Evidence("no adapter: the two sides are matched without a learned map"),),
    )
    return transforms, adapters_f


def _t_squared(term: ir.Term, m: ir.Method) -> ir.Expr | None:
    """The temperature whose square scales the weight, if any.

    Read on the canonical form, so every spelling counts (``T^2``, ``T * T``, ``alpha * T * T``):
    a parameter temperature must divide every part of the weight twice. A literal temperature
    cannot be told from a constant by its spelling (``0.9 * 4^2`` is ``14.4``): the weight
    counts as T^2-scaled when it is a round multiple of the square (``14.4 = 0.9 * 4^2``).
    """
    calls = [*term.knowledge, *ir.find_all(term.source, ir.Call, m)]
    calls += ir.find_all(term.target, ir.Call, m)
    temps = [c.kwargs["T"] for c in calls if c.func in _TEMPERATURED and "T" in c.kwargs]
    unique: list[ir.Expr] = []  # by equality: an expression with a call (kwargs) is unhashable
    for temp in temps:
        if temp not in unique:
            unique.append(temp)
    for temp in unique:
        if not isinstance(temp, ir.Num):
            if power_of(term.weight, temp) >= 2:
                return temp
            continue
        weight = _num(term.weight, m.params)
        if weight is None or temp.value <= 1 or weight <= 0:
            continue
        ratio = weight / temp.value / temp.value  # no overflow for a huge T
        if abs(float(f"{ratio:.2g}") - ratio) <= 1e-9 * ratio:
            return temp
    return None


def _losses_and_weights(m: ir.Method) -> tuple[Finding, Finding]:
    l_vals, l_ev, w_vals, w_ev = [], [], [], []
    for term in m.terms:
        fn = FUNCTIONS.get(term.loss.func)
        family = fn.family if fn and fn.family else "?"
        if fn is None and m.function(term.loss.func) is not None:
            family = "defined in the spec"
        l_vals.append(f"{term.loss.func} ({family})")
        l_ev.append(
            Evidence(
                f"`{term.name}` ({term.kind}): `{expr_text(term.loss)}`, family {family}",
                ("term", term.name, "loss"),
            )
        )
        value = _num(term.weight, m.params)
        shown = expr_text(term.weight)
        if value is not None and shown != f"{value:g}":
            shown += f" = {value:g}"
        notes: list[str] = []
        temp = _t_squared(term, m)
        if temp is not None:
            w_vals.append("T^2 scaling")
            notes.append(f"T^2 scaling: `{expr_text(temp)}` is also the softmax temperature")
        if not types.is_static(term.weight, m):
            per_sample = types.value_type(term.weight, m).axes == ("batch",)
            label = "per-sample" if per_sample else "computed from the batch"
            w_vals.append(label)
            notes.append(label)
        for call in ir.find_all(term.weight, ir.Call, m):
            f = FUNCTIONS.get(call.func)
            if f is not None and f.category == "schedule":
                label = "warm-up" if call.func == "warmup" else f"{call.func} schedule"
                w_vals.append(label)
                notes.append(f"{label} `{expr_text(call)}`")
        w_ev.append(
            Evidence(
                f"`{term.name}`: weight `{shown}`" + (f" ({'; '.join(notes)})" if notes else ""),
                ("term", term.name, "weight"),
            )
        )
    losses = Finding("losses", "; ".join(_sorted_unique(l_vals)) or "none", (), tuple(l_ev))
    weights = Finding("weights", ", ".join(_sorted_unique(w_vals)) or "constant", (), tuple(w_ev))
    return losses, weights


# ---------------------------------------------------------------------------------------------
# When, on what data, with which labels
# ---------------------------------------------------------------------------------------------


def _stage_adapters(stage: ir.Stage, m: ir.Method) -> list[str]:
    """The learned adapters a stage trains by naming a term or a ``let`` (FT's paraphraser)."""
    out: list[str] = []
    for item in stage.train:
        if isinstance(item, ir.LetRef):
            out += types.uses_adapter(item, m)
        elif isinstance(item, ir.Str) and (term := m.term(item.value)) is not None:
            out += types.uses_adapter(term.source, m) + types.uses_adapter(term.target, m)
            out += [
                k.func
                for k in term.knowledge
                if FUNCTIONS.get(k.func) is not None and FUNCTIONS[k.func].category == "adapter"
            ]
    return list(dict.fromkeys(out))


def _stages(kg: KdGraph, terms: dict[str, TermKnowledge]) -> Finding:
    m = kg.method
    stages = m.effective_stages()
    ev: list[Evidence] = []
    summaries: list[str] = []
    runs = 0
    for i, stage in enumerate(stages, 1):
        active = kg.active_terms(stage)
        trained = sorted(kg.trained_roles(stage))
        cats = sorted(
            {terms[t.name].category for t in active if t.name in terms},
            key=CATEGORIES.index,
        )
        if any(t.kind == "supervise" for t in active):
            cats.append("labels")
        kinds = sorted({m.role(r).kind for r in trained if m.role(r) is not None})  # type: ignore[union-attr]
        partial = [x for x in stage.train if not (isinstance(x, ir.Tap) and x.point == "output")]
        partly = any(isinstance(x, ir.Tap) for x in partial)
        adapters = _stage_adapters(stage, m)
        what = [*kinds, *([f"adapters ({', '.join(adapters)})"] if adapters else [])]
        summaries.append(
            "+".join(cats or ["nothing"])
            + " / trains "
            + ("+".join(what) or "nothing")
            + (" (partly)" if partly else "")
        )
        repeat = _num(stage.repeat, m.params) if stage.repeat is not None else 1.0
        runs += int(repeat) if repeat is not None and repeat >= 1 else 2
        name = f"stage `{stage.name}` ({i} of {len(stages)})" if m.stages else "a single stage"
        dur = ""
        if stage.duration is not None:
            length = _num(stage.duration, m.params)
            dur = (
                f" for {length:g} of training"
                if stage.unit == "fraction" and length is not None
                else f" for `{expr_text(stage.duration)}` {stage.unit or 'epochs'}"
            )
        rep = f", repeated `{expr_text(stage.repeat)}` times" if stage.repeat else ""
        items = f" ({', '.join(expr_text(x) for x in stage.train)})" if partial else ""
        hand = "".join(f"; then `{a}` becomes `{b}`" for a, b in stage.handoffs)
        ev.append(
            Evidence(
                f"{name}{dur}{rep}: runs {_names(t.name for t in active) or 'nothing'}; trains "
                f"{_names(trained) or 'nothing'}{items}{hand}",
                ("stage", stage.name) if m.stages else (),
            )
        )
    label = "multi" if runs > 1 else "single"
    if label == "multi":
        why = Evidence(
            f"{_plural(len(stages), 'stage')} run in sequence"
            + (f" ({runs} runs with repeats)" if runs != len(stages) else ""),
            ("stage", stages[0].name),
        )
    else:
        why = Evidence("the method runs in a single stage", ())
    ev.append(
        Evidence(
            "stages are the learner's training phases; whether a teacher is offline is "
            "decided by the scheme, not by the stage count"
        )
    )
    value = f"{len(stages)}: " + " -> ".join(summaries)
    if runs != len(stages):
        value += f" ({runs} runs)"
    return Finding("stages", value, (label,), (why, *ev), ((label, (why,)),))


def _data(m: ir.Method) -> Finding:
    """Data preparation as the seed paper's general model has it: modification (views,
    augmentation, noise, paired samples) and partitioning (subsets per role and per term)."""
    seen: dict[str, set[str]] = {}
    for term in m.terms:
        for e in (term.source, term.target):
            for tap, _ in types.taps(e, m):
                if tap.view:
                    seen.setdefault(tap.view, set()).add(tap.role)
    for role in m.roles:
        if role.view:
            seen.setdefault(role.view, set()).add(role.name)
    modified: list[str] = []
    parts: list[str] = []
    ev: list[Evidence] = []
    for part in m.data:
        if part.kind == "view":
            if part.func == "same_class":
                label = "paired samples (same_class)"
            elif part.func == "gaussian_noise":
                label = "noise (gaussian_noise)"
            elif part.func == "clean":
                label = "clean view"
            elif part.func == "on_policy":
                label = "on-policy samples of the student (on_policy)"
            elif part.func == "teacher_generations":
                label = "the teacher's generations as targets (teacher_generations)"
            else:
                label = f"augmentation ({part.func or 'bound by the run'})"
            modified.append(label)
            who = _names(sorted(seen.get(part.name, ()))) or "no role"
            ev.append(
                Evidence(
                    f"modification: view `{part.name}` = {part.func or 'bound by the run'}, "
                    f"seen by {who}",
                    ("data", part.name),
                )
            )
        else:
            users = [t.name for t in m.terms if t.subset == part.name]
            parts.append(f"subset ({part.func or 'bound by the run'}) per term")
            ev.append(
                Evidence(
                    f"partitioning: subset `{part.name}` = {part.func or 'bound by the run'}, "
                    f"used by {_names(users) or 'no term'}",
                    ("data", part.name),
                )
            )
    if len(seen) > 1 or (seen and len({r for rs in seen.values() for r in rs}) < len(m.roles)):
        views = "; ".join(f"{_names(sorted(rs))} under `{v}`" for v, rs in sorted(seen.items()))
        ev.append(Evidence(f"the roles see different data: {views}"))
    value = []
    if modified:
        value.append("modification: " + ", ".join(_sorted_unique(modified)))
    if parts:
        value.append("partitioning: " + ", ".join(_sorted_unique(parts)))
    if not value:
        ev.append(Evidence("no views or subsets: every role sees the same batches, unmodified"))
    return Finding("data", "; ".join(value) or "same data", (), tuple(ev))


def _architecture(m: ir.Method, edges: list[TeachingEdge]) -> Finding:
    """The teacher-student architecture relation of each teaching edge, as the spec states it."""
    labels: list[str] = []
    ev: list[Evidence] = []
    for e in edges:
        if e.relation == "virtual":
            continue
        role_t, role_s = m.role(e.teacher), m.role(e.student)
        if e.relation in ("self", "ema", "snapshot", "generation", "copy"):
            label = "same"
            how = {
                "self": "one network teaches itself",
                "ema": "the teacher is a moving average of the learner",
                "snapshot": "the teacher is a snapshot of the learner",
                "generation": "generations of one network (handoff)",
                "copy": f"stated: {_like_text(e.teacher, e.student, m)}",
            }[e.relation]
        elif role_s is not None and role_s.like == e.teacher and role_s.size:
            label, how = (
                f"family ({role_s.size})",
                f"stated: `{e.student} like {e.teacher} {role_s.size}`",
            )
        elif role_t is not None and role_t.like == e.student and role_t.size:
            label, how = (
                f"family ({role_t.size})",
                f"stated: `{e.teacher} like {e.student} {role_t.size}`",
            )
        else:
            label = "unstated"
            how = "no `like` relates them: any two models the run binds"
        labels.append(label)
        ev.append(Evidence(f"`{e.teacher}` -> `{e.student}`: {label} architecture ({how})"))
    if not ev:
        ev.append(Evidence("no network teaches: no architecture relation"))
    return Finding("architecture", ", ".join(_sorted_unique(labels)) or "none", (), tuple(ev))


def _initialisation(m: ir.Method, edges: list[TeachingEdge]) -> Finding:
    """How each learner's weights start: from scratch, from another role, a previous
    generation."""
    learners = list(dict.fromkeys([e.student for e in edges if e.relation != "self"]))
    learners += [
        r.name for r in m.roles if r.kind in ("student", "peer") and r.name not in learners
    ]
    handed = {dst: (src, st.name) for st in m.stages for src, dst in st.handoffs}
    labels: list[str] = []
    ev: list[Evidence] = []
    for name in learners:
        role = m.role(name)
        if role is None or role.mode in ("ema", "snapshot", "virtual"):
            continue
        if role.init_from:
            teaches = any(e.teacher == role.init_from and e.student == name for e in edges)
            label = "from the teacher's weights" if teaches else "from another role's weights"
            ev.append(
                Evidence(
                    f"`{name}` starts from the weights of `{role.init_from}` (stated: "
                    f"`{name} from {role.init_from}`)",
                    ("role", name),
                )
            )
        else:
            label = "from scratch"
            ev.append(Evidence(f"`{name}` starts from scratch (no `from`)", ("role", name)))
        labels.append(label)
    for dst, (src, stage) in handed.items():
        labels.append("previous generation")
        ev.append(
            Evidence(
                f"`{dst}` takes the weights of `{src}` after each run of stage "
                f"`{stage}` (handoff): the next generation's teacher",
                ("stage", stage),
            )
        )
    if not ev:
        ev.append(Evidence("no learner"))
    return Finding("initialisation", ", ".join(_sorted_unique(labels)) or "none", (), tuple(ev))


_UNDERIVABLE = (
    "cross-modal, data-free, quantized, lifelong and NAS-based distillation cannot be told from "
    "a spec today (the language states no modality, synthetic data, precision, task sequence or "
    "architecture search)"
)


def _algorithm(
    m: ir.Method, edges: list[TeachingEdge], terms: list[TermKnowledge], topology: str
) -> Finding:
    """Gou et al.'s distillation algorithms (Sec. 5), where the graph shows them."""
    support: dict[str, list[Evidence]] = {}
    for term in m.terms:
        if term.kind != "transfer":
            continue
        calls = [*term.knowledge, *ir.find_all(term.source, ir.Call, m)]
        calls += ir.find_all(term.target, ir.Call, m)
        attn = [
            c.func
            for c in calls
            if c.func in FUNCTIONS
            and (
                FUNCTIONS[c.func].returns == "attention" or "attention" in FUNCTIONS[c.func].family
            )
        ]
        if attn:
            support.setdefault("attention-based", []).append(
                Evidence(
                    f"`{term.name}` transfers attention (`{'`, `'.join(dict.fromkeys(attn))}`)",
                    ("term", term.name),
                )
            )
        adv = [
            c.func
            for c in [*calls, term.loss]
            if c.func in FUNCTIONS and FUNCTIONS[c.func].family in ("adversarial", "discriminator")
        ]
        if adv:
            support.setdefault("adversarial", []).append(
                Evidence(
                    f"`{term.name}` is adversarial (`{'`, `'.join(adv)}`)", ("term", term.name)
                )
            )
    sample_kinds = {FUNCTIONS[f].family for f in _SAMPLE_RELATIONS if f in FUNCTIONS}
    sample_kinds |= {"contrastive", "intra-class correlation"}
    for tk in terms:
        if tk.category == "relation" and set(tk.kind.split(", ")) & sample_kinds:
            support.setdefault("graph-based", []).append(
                Evidence(
                    f"`{tk.term}` relates the samples of a batch ({tk.kind}): a graph over "
                    "the batch",
                    ("term", tk.term),
                )
            )
    if topology == "multi_teacher":
        support.setdefault("multi-teacher", []).append(
            Evidence("a learner learns from several teachers (topology multi_teacher)")
        )
    labels = tuple(sorted(support))
    ev = [x for k in labels for x in support[k]]
    ev.append(Evidence(_UNDERIVABLE))
    return Finding(
        "algorithm",
        ", ".join(labels) or "plain",
        labels,
        tuple(ev),
        tuple((k, tuple(v)) for k, v in support.items()),
    )


def _ground_truth(m: ir.Method, edges: list[TeachingEdge]) -> Finding:
    learners = {e.student for e in edges} | {
        r.name for r in m.roles if r.kind in ("student", "peer")
    }
    ev: list[Evidence] = []
    kinds: list[str] = []
    for term in m.terms:
        if term.kind != "supervise":
            continue
        roles = sorted(types.grad_roles(term.target, m))
        on = f" on subset `{term.subset}`" if term.subset else ""
        ev.append(
            Evidence(
                f"`{term.name}` supervises `{expr_text(term.target)}` with `{term.loss.func}`{on}",
                ("term", term.name),
            )
        )
        for r in roles:
            role = m.role(r)
            if r in learners and role is not None:
                kinds.append(role.kind + (" (on a subset)" if term.subset else ""))
    for term in m.terms:
        for call in (
            *term.knowledge,
            *ir.find_all(term.source, ir.Call, m),
            *ir.find_all(term.target, ir.Call, m),
        ):
            fn = FUNCTIONS.get(call.func)
            if fn is not None and fn.needs_labels:
                ev.append(
                    Evidence(f"labels also shape the knowledge of `{term.name}` (`{call.func}`)")
                )
    for role in m.roles:
        if role.mode == "virtual":
            ev.append(Evidence(f"virtual teacher `{role.name}` is built from the labels"))
    value = ("yes: " + ", ".join(_sorted_unique(kinds))) if kinds else "no"
    if not ev:
        ev.append(Evidence("no term reads the labels"))
    return Finding("ground_truth", value, ("yes",) if kinds else ("no",), tuple(ev))


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def classify(kg: KdGraph) -> Classification:
    """Classify a method from its graph along every dimension of :data:`DIMENSIONS`.

    The method is classified in its canonical form (:func:`kdspec.ir.canonical.canonicalize`),
    so two spellings of one computation get the same labels.
    """
    m = canonicalize(kg.method)
    if m != kg.method:
        kg = build_graph(m)
    edges = _edges(kg)
    terms = [_term_knowledge(t, m) for t in m.terms if t.kind == "transfer"]
    roles, topology = _roles_and_topology(kg, edges)
    scheme, state = _scheme_and_state(edges)
    taps, mapping = _taps_and_mapping(terms, m)
    transforms, adapters = _transforms_and_adapters(m)
    losses, weights = _losses_and_weights(m)
    findings = (
        roles,
        topology,
        state,
        scheme,
        _knowledge(terms),
        taps,
        mapping,
        transforms,
        adapters,
        losses,
        weights,
        _stages(kg, {t.term: t for t in terms}),
        _data(m),
        _ground_truth(m, edges),
        _architecture(m, edges),
        _initialisation(m, edges),
        _algorithm(m, edges, terms, topology.labels[0]),
    )
    return Classification(m.name, findings, tuple(edges), tuple(terms))


__all__ = [
    "CATEGORIES",
    "DIMENSIONS",
    "SCHEMES",
    "Classification",
    "Evidence",
    "Finding",
    "TeachingEdge",
    "TermKnowledge",
    "classify",
    "point_text",
]
