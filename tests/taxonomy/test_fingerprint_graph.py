"""The fingerprint identify compares is a projection of the one method graph (graph.build)."""

from __future__ import annotations

import pytest
from taxonomy_cases import library_names, library_text, lower_text

from kdspec.api import load_method
from kdspec.graph import build_graph
from kdspec.ir.canonical import canonicalize
from kdspec.taxonomy.identify import fingerprint

# fingerprint node kind -> (method graph node type, id prefix there)
_FROM = {
    "role": ("role", "role:"),
    "ensemble": ("ensemble", "ensemble:"),
    "labels": ("labels", "labels"),
    "term": ("loss", "loss:"),
    "side": ("knowledge", "knowledge:"),
}


@pytest.mark.parametrize("name", library_names())
def test_every_fingerprint_node_is_a_node_or_flow_of_the_method_graph(name: str) -> None:
    method = lower_text(library_text(name)).method
    kg = build_graph(canonicalize(method))
    fp = fingerprint(method)
    for nid, d in fp.nodes(data=True):
        key = nid.split(":", 1)[1] if ":" in nid else ""
        if d["kind"] in _FROM:
            type_, prefix = _FROM[d["kind"]]
            assert kg.g.nodes[prefix + key]["type"] == type_
        elif d["kind"] in ("view", "subset"):
            assert kg.g.nodes[nid]["type"] == d["kind"]
        elif d["kind"] == "tap":  # one per flow from a tap into a side, by position
            term, side, i = key.split("/")
            flows = kg.g.in_edges(f"knowledge:{term}/{side}", data=True)
            assert any(
                d["type"] == "flows" and d["index"] == int(i) and u.startswith("tap:")
                for u, _, d in flows
            )
        else:
            assert d["kind"] == "stage"
    stages = [n for n, d in kg.g.nodes(data=True) if d["type"] == "stage"]
    assert sorted(n for n in fp if n.startswith("stage:")) == [
        f"stage:{i}" for i in range(len(stages))
    ]
    taps = sum(
        1
        for u, v, d in kg.g.edges(data=True)
        if d["type"] == "flows" and u.startswith("tap:") and v.startswith("knowledge:")
    )
    assert sum(1 for _, d in fp.nodes(data=True) if d["kind"] == "tap") == taps


def _edges(kg: object, type_: str) -> set[tuple[str, str]]:
    return {(u, v) for u, v, _ in kg.edges_of(type_)}  # type: ignore[attr-defined]


def test_the_method_graph_holds_what_the_fingerprint_reads() -> None:
    kg = build_graph(load_method("mean_teacher").method)
    assert _edges(kg, "ema") == {("role:s", "role:m")}
    assert _edges(kg, "view") == {("data:b", "tap:m[b].logits"), ("data:a", "tap:s[a].logits")}
    assert _edges(kg, "feeds") == {("data:labelled", "loss:ce")}  # a supervised term's subset
    kg = build_graph(load_method("distilbert").method)
    assert _edges(kg, "like") == {("role:t", "role:s")}
    assert _edges(kg, "init_from") == {("role:t", "role:s")}
    kg = build_graph(load_method("fitnets").method)
    assert _edges(kg, "trains_part") == {("stage:hints", "role:s")}
    assert _edges(kg, "trains_adapters") == {("stage:hints", "loss:hint")}


def test_a_tap_read_twice_by_one_side_is_two_fingerprint_taps_and_one_graph_tap() -> None:
    text = """method m {
  teacher t
  student s
  let twice = mean(s.stage[1], s.stage[1])
  transfer h: from t.stage[1] to twice with mse
}"""
    method = load_method("m.kd", text=text).method
    kg = build_graph(method)
    assert [n for n, d in kg.g.nodes(data=True) if d["type"] == "tap"] == [
        "tap:t.stage[1]",
        "tap:s.stage[1]",
    ]
    fp = fingerprint(method)
    assert sorted(n for n, d in fp.nodes(data=True) if d["kind"] == "tap") == [
        "tap:h/source/0",
        "tap:h/target/0",
        "tap:h/target/1",
    ]
