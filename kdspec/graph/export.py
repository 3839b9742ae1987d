"""The method graph as Graphviz dot, Mermaid or JSON."""

from __future__ import annotations

import json

from kdspec.graph.build import KdGraph

_SHAPES = {
    "role": "box",
    "tap": "ellipse",
    "knowledge": "note",
    "adapter": "component",
    "loss": "diamond",
    "stage": "folder",
    "labels": "cylinder",
    "ensemble": "box3d",
    "view": "parallelogram",
    "subset": "parallelogram",
}
_LEGEND = [
    ("role", "who"),
    ("tap", "where"),
    ("knowledge", "what"),
    ("adapter", "adapter"),
    ("loss", "how"),
    ("stage", "when"),
]


def _label(node: str, data: dict[str, object]) -> list[str]:
    """The lines of a node's label, as plain text (each format escapes them its own way)."""
    kind = data.get("type")
    if kind == "role":
        return [f"{data['kind']} {data['name']}", f"({data['mode']})"]
    if kind == "tap":
        return [str(data["text"])]
    if kind == "knowledge":
        return [f"{data['term']}: {data['kind']}"]
    if kind == "loss":
        return [str(data["term"]), str(data["func"])]
    if kind == "adapter":
        return [str(data["func"])]
    if kind == "stage":
        return [f"stage {data['name']}"]
    return [node.split(":", 1)[-1]]


def _dot(text: str) -> str:
    """Text inside a DOT double-quoted string: quotes, backslashes and line breaks escaped
    (a tap's quoted module path is user text and must not end the string)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "")


def _mermaid(text: str) -> str:
    """Text inside a Mermaid label: characters with a meaning there as entity codes."""
    for char, code in (
        ("#", "#35;"),
        ('"', "#quot;"),
        ("|", "#124;"),
        ("<", "#lt;"),
        (">", "#gt;"),
    ):
        text = text.replace(char, code)
    return text.replace("\n", " ")


def _edge_label(data: dict[str, object]) -> str:
    kind = str(data.get("type"))
    if kind in ("teaches", "supervises"):
        stop = " (stopgrad)" if data.get("stopgrad") else ""
        return f"{kind} [{data.get('term')}]{stop}"
    return "" if kind in ("reads", "flows", "matched_by") else kind


def _ids(kg: KdGraph) -> dict[str, str]:
    return {n: f"n{i}" for i, n in enumerate(kg.g.nodes)}


def to_dot(kg: KdGraph, legend: str | None = None) -> str:
    """Graphviz source, one cluster per kind of node, with a legend."""
    ids = _ids(kg)
    lines = [f'digraph "{kg.method.name}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for node, data in kg.g.nodes(data=True):
        shape = _SHAPES.get(str(data.get("type")), "box")
        label = "\\n".join(_dot(line) for line in _label(node, data))
        lines.append(f'  {ids[node]} [label="{label}", shape={shape}];')
    for u, v, data in kg.g.edges(data=True):
        label = _dot(_edge_label(data))
        style = ', style=bold, color="#c0392b"' if data.get("type") == "teaches" else ""
        attr = f' [label="{label}"{style}]' if label else ""
        lines.append(f"  {ids[u]} -> {ids[v]}{attr};")
    if legend:
        text = "\\l".join(_dot(line) for line in legend.split("\n"))
        lines.append(f'  legend [shape=plaintext, label="{text}\\l"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(kg: KdGraph, legend: str | None = None) -> str:
    """A Mermaid flowchart."""
    ids = _ids(kg)
    lines = ["flowchart LR"]
    for node, data in kg.g.nodes(data=True):
        label = "<br/>".join(_mermaid(line) for line in _label(node, data))
        lines.append(f'  {ids[node]}["{label}"]')
    for u, v, data in kg.g.edges(data=True):
        label = _mermaid(_edge_label(data))
        arrow = "==>" if data.get("type") == "teaches" else "-->"
        lines.append(f"  {ids[u]} {arrow}{f'|{label}|' if label else ''} {ids[v]}")
    if legend:
        lines.append("  %% " + legend.replace("\r", "").replace("\n", "; "))
    return "\n".join(lines) + "\n"


def to_json(kg: KdGraph) -> str:
    """Nodes and edges with their attributes (taps written as spec text)."""
    nodes = []
    for node, data in kg.g.nodes(data=True):
        clean = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in data.items()}
        nodes.append({"id": node, **clean})
    edges = [{"source": u, "target": v, **d} for u, v, d in kg.g.edges(data=True)]
    return (
        json.dumps(
            {"method": kg.method.name, "nodes": nodes, "edges": edges}, indent=2, default=str
        )
        + "\n"
    )
