"""KD305: roles that teach each other in a cycle need a stop-gradient somewhere on it."""

from __future__ import annotations

import networkx as nx

from kdspec.diagnostics import Diagnostic
from kdspec.passes.context import PassContext


def check_cycles(ctx: PassContext) -> list[Diagnostic]:
    """Mutual learning without `stopgrad` lets each loss pull both peers."""
    kg = ctx.graph
    leaky = nx.DiGraph()
    terms: dict[tuple[str, str], str] = {}
    for u, v, d in kg.edges_of("teaches"):
        if d.get("stopgrad") or u == v:
            continue
        role = ctx.method.role(u.removeprefix("role:"))
        if role is None or role.mode != "trained":
            continue
        leaky.add_edge(u, v)
        terms[(u, v)] = d["term"]
    out: list[Diagnostic] = []
    order = {f"role:{r.name}": i for i, r in enumerate(ctx.method.roles)}
    cycles = []
    for cycle in nx.simple_cycles(leaky):
        k = min(range(len(cycle)), key=lambda i: order.get(cycle[i], len(order)))
        cycles.append(cycle[k:] + cycle[:k])  # start at the first declared role: stable output
    for cycle in sorted(cycles, key=lambda c: [order.get(n, len(order)) for n in c]):
        names = [n.removeprefix("role:") for n in cycle]
        edges = list(zip(cycle, [*cycle[1:], cycle[0]], strict=True))
        first = terms[edges[0]]
        out.append(
            ctx.diag(
                "KD305",
                "teaching cycle " + " -> ".join([*names, names[0]]) + " has no stop-gradient",
                ("term", first, "source"),
                "gradient flows back into the teacher here",
                related=tuple((("term", terms[e], "source"), "and here") for e in edges[1:]),
                help=f"wrap the teacher side in `stopgrad(...)`, e.g. "
                f"`from stopgrad({names[0]}.logits)`",
            )
        )
    return out
