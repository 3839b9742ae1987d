"""Build the method graph from the IR.

Nodes are roles, taps, knowledge (one per side of a term), adapters, losses, stages and the
labels; edges carry data flow (``reads``, ``flows``, ``matched_by``, ``view``, ``sees``,
``feeds``), who teaches whom (``teaches``, ``supervises``), how roles relate (``ema``,
``snapshot``, ``like``, ``init_from``, ``handoff``) and when (``activates``, ``trains``,
``trains_part``, ``trains_adapters``, ``freezes``). The taxonomy's fingerprints are projections
of this graph (:func:`kdspec.taxonomy.identify.fingerprint`). Node ids are strings such as
``role:t``, ``tap:t.stage[1..3]``, ``knowledge:kd/source``, ``loss:kd``, ``stage:hint``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx

from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.ir.printer import expr_text
from kdspec.vocabulary import FUNCTIONS


@dataclass
class KdGraph:
    """A method and its graph (a ``networkx.MultiDiGraph``)."""

    method: ir.Method
    g: nx.MultiDiGraph

    def edges_of(self, type_: str) -> list[tuple[str, str, dict[str, Any]]]:
        """Edges of one type, with their attributes."""
        return [(u, v, d) for u, v, d in self.g.edges(data=True) if d.get("type") == type_]

    def active_terms(self, stage: ir.Stage) -> list[ir.Term]:
        """Terms a stage runs (all of them when it lists none)."""
        if not stage.losses:
            return list(self.method.terms)
        return [t for t in self.method.terms if t.name in stage.losses]

    def trained_roles(self, stage: ir.Stage) -> set[str]:
        """Roles whose weights a stage updates by gradient.

        Explicit ``train`` items win; otherwise every role with mode ``trained`` that some
        active term sends gradient into.
        """
        m = self.method
        explicit = {t.role for t in stage.train if isinstance(t, ir.Tap)}
        if explicit:
            return explicit
        frozen = {t.role for t in stage.freeze if isinstance(t, ir.Tap)}
        out: set[str] = set()
        for term in self.active_terms(stage):
            for r in types.grad_roles(term.target, m):
                role = m.role(r)
                if role is not None and role.mode == "trained" and r not in frozen:
                    out.add(r)
        return out


def _attrs(**kw: Any) -> dict[str, Any]:
    return kw


def build_graph(method: ir.Method) -> KdGraph:
    """The method graph of a lowered method (pure: the IR is not changed)."""
    g = nx.MultiDiGraph(name=method.name)
    m = method
    for role in m.roles:
        g.add_node(
            f"role:{role.name}",
            **_attrs(
                type="role",
                name=role.name,
                kind=role.kind,
                mode=role.mode,
                source=role.source,
                view=role.view,
            ),
        )
    for role in m.roles:  # after every role node, so nodes keep the declaration order
        if role.source:
            g.add_edge(f"role:{role.source}", f"role:{role.name}", type=role.mode)
        if role.like:
            g.add_edge(f"role:{role.like}", f"role:{role.name}", type="like", size=role.size)
        if role.init_from:
            g.add_edge(f"role:{role.init_from}", f"role:{role.name}", type="init_from")
    for ens in m.ensembles:
        g.add_node(
            f"ensemble:{ens.name}",
            type="ensemble",
            name=ens.name,
            members=ens.members,
            weights=expr_text(ens.weights) if ens.weights is not None else None,
        )
        for member in ens.members:
            g.add_edge(f"role:{member}", f"ensemble:{ens.name}", type="member")
    g.add_node("labels", type="labels")
    for part in m.data:
        g.add_node(f"data:{part.name}", type=part.kind, name=part.name, func=part.func)
    for role in m.roles:
        if role.view and g.has_node(f"data:{role.view}"):
            g.add_edge(f"data:{role.view}", f"role:{role.name}", type="sees")

    for term in m.terms:
        loss_fn = FUNCTIONS.get(term.loss.func)
        g.add_node(
            f"loss:{term.name}",
            type="loss",
            term=term.name,
            func=term.loss.func,
            family=loss_fn.family if loss_fn else "",
            term_kind=term.kind,
            origin=term.origin,
        )
        for side, expr, kind in types.term_sides(term, m):
            kid = f"knowledge:{term.name}/{side}"
            g.add_node(
                kid,
                type="knowledge",
                term=term.name,
                side=side,
                kind=kind,
                transforms=tuple(c.func for c in term.knowledge),
                expr=expr,
            )
            for i, (tap, stop) in enumerate(types.taps(expr, m)):
                tid = f"tap:{types.tap_text(tap)}"
                g.add_node(
                    tid,
                    type="tap",
                    role=tap.role,
                    point=tap.point,
                    tap=tap,
                    text=types.tap_text(tap),
                )
                node = (
                    f"ensemble:{tap.role}"
                    if g.has_node(f"ensemble:{tap.role}")
                    else f"role:{tap.role}"
                )
                if not g.has_edge(node, tid):  # several terms may read the same tap
                    g.add_edge(node, tid, type="reads")
                    if tap.view and g.has_node(f"data:{tap.view}"):
                        g.add_edge(f"data:{tap.view}", tid, type="view")
                g.add_edge(tid, kid, type="flows", stopgrad=stop, index=i)
            for i, adapter in enumerate(types.uses_adapter(expr, m)):
                aid = f"adapter:{term.name}/{side}/{i}"
                g.add_node(aid, type="adapter", func=adapter, term=term.name, side=side)
                g.add_edge(aid, kid, type="flows")
            for i, call in enumerate(term.knowledge):
                fn = FUNCTIONS.get(call.func)
                if fn is not None and fn.category == "adapter":
                    aid = f"adapter:{term.name}/{side}/k{i}"
                    g.add_node(aid, type="adapter", func=call.func, term=term.name, side=side)
                    g.add_edge(aid, kid, type="flows")
            g.add_edge(kid, f"loss:{term.name}", type="matched_by", side=side)
        if term.subset:
            g.add_edge(f"data:{term.subset}", f"loss:{term.name}", type="feeds")
        learners = types.grad_roles(term.target, m)
        if term.kind == "supervise":
            for r in sorted(learners):
                g.add_edge("labels", f"role:{r}", type="supervises", term=term.name)
            continue
        teachers = types.roles_read(term.source, m)
        open_grad = types.grad_roles(term.source, m)
        for t in sorted(teachers):
            for s in sorted(learners):
                g.add_edge(
                    f"role:{t}",
                    f"role:{s}",
                    type="teaches",
                    term=term.name,
                    stopgrad=t not in open_grad,
                    family=loss_fn.family if loss_fn else "",
                )
        if not teachers:  # knowledge made from labels alone (a virtual teacher's target)
            for s in sorted(learners):
                g.add_edge("labels", f"role:{s}", type="teaches", term=term.name, stopgrad=True)

    kg = KdGraph(m, g)
    for stage in m.effective_stages():
        sid = f"stage:{stage.name}"
        g.add_node(sid, type="stage", name=stage.name, declared=bool(m.stages))
        for term in kg.active_terms(stage):
            g.add_edge(sid, f"loss:{term.name}", type="activates")
        for r in sorted(kg.trained_roles(stage)):
            if g.has_node(f"role:{r}"):
                g.add_edge(sid, f"role:{r}", type="trains")
        _add_stage_parts(g, sid, stage)
        for src, dst in stage.handoffs:
            g.add_edge(f"role:{src}", f"role:{dst}", type="handoff", stage=stage.name)
    return kg


def _add_stage_parts(g: nx.MultiDiGraph, sid: str, stage: ir.Stage) -> None:
    """What a stage trains or freezes beyond whole roles: adapters of terms, parts of roles."""
    for item in stage.train:
        if isinstance(item, ir.Str) and g.has_node(f"loss:{item.value}"):
            g.add_edge(sid, f"loss:{item.value}", type="trains_adapters")
        elif isinstance(item, ir.Tap) and item.point != "output":
            if g.has_node(f"role:{item.role}"):
                g.add_edge(sid, f"role:{item.role}", type="trains_part")
    for item in stage.freeze:
        if isinstance(item, ir.Tap) and g.has_node(f"role:{item.role}"):
            g.add_edge(sid, f"role:{item.role}", type="freezes")
