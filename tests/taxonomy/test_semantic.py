"""identify, taxonomy and diff are semantic: rewrites that keep a method's meaning change none
of them; a single semantic edit is always reported by diff, as the right kind of change."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rewrites import EDITS, PRESERVING
from taxonomy_cases import library_names, library_text, lower_text

from kdspec.cli.main import main
from kdspec.graph import build_graph
from kdspec.ir.evaluate import evaluate
from kdspec.taxonomy.classify import classify
from kdspec.taxonomy.diff import diff, only_renames, render
from kdspec.taxonomy.identify import identify

LIBRARY = {name: lower_text(library_text(name)).method for name in library_names()}
HINTON = library_text("hinton")


def _rewrite(name: str, steps: list[str], seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    m = LIBRARY[name]
    for step in steps:
        m = PRESERVING[step](m, rng)
    return m


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(LIBRARY)),
    steps=st.lists(st.sampled_from(sorted(PRESERVING)), min_size=1, max_size=4),
    seed=st.integers(0, 10**6),
)
@example(name="pkt", steps=["pipeline", "reorder", "values", "values"], seed=1)
@example(name="one", steps=["rename"], seed=0)
def test_rewrites_keep_identify_exact_taxonomy_and_an_empty_diff(
    name: str, steps: list[str], seed: int
) -> None:
    m = _rewrite(name, steps, seed)
    assert name in [x.method for x in identify(m).exact], steps
    assert classify(build_graph(m)).labels() == classify(build_graph(LIBRARY[name])).labels()
    changes = diff(LIBRARY[name], m)
    if "rename" in steps:
        assert only_renames(changes), render(changes)
    else:
        assert changes == [], render(changes)


def _weight_is_zero(m, i_term: str) -> bool:  # type: ignore[no-untyped-def]
    term = m.term(i_term)
    try:
        return term is not None and evaluate(term.weight, m.params) == 0
    except Exception:
        return False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(LIBRARY)),
    edit=st.sampled_from(sorted(EDITS)),
    seed=st.integers(0, 10**6),
)
def test_a_single_semantic_edit_is_reported_as_what_it_is(name: str, edit: str, seed: int) -> None:
    done = EDITS[edit](LIBRARY[name], random.Random(seed))
    if done is None:
        return
    edited, what, part, field = done
    if edit == "weight" and _weight_is_zero(LIBRARY[name], part):
        return
    changes = diff(LIBRARY[name], edited)
    hits = [
        c
        for c in changes
        if c.what == what
        and c.op in ("changed", "renamed")
        and (c.old_name or c.name) == part
        and any(d.startswith(f"{field}:") for d in c.details)
    ]
    assert hits, render(changes)


# The examples ---------------------------------------------------------------------


def test_softmax_on_each_side_is_hinton_exactly() -> None:
    text = HINTON.replace(
        "transfer kd: softmax(T) from t.logits to s.logits",
        "transfer kd: from softmax(t.logits, T) to softmax(s.logits, T)",
    )
    m = lower_text(text).method
    ident = identify(m)
    assert [x.method for x in ident.exact] == ["hinton"]
    c = classify(build_graph(m))
    assert c["knowledge"].value == "response (soft targets)"
    assert c["weights"].value == "T^2 scaling"
    assert diff(LIBRARY["hinton"], m) == []


def test_open_range_written_from_one_is_exact() -> None:
    text = library_text("at").replace("stage[..]", "stage[1..]")
    assert "at" in [x.method for x in identify(lower_text(text).method).exact]


def test_renamed_roles_are_renames_not_new_terms() -> None:
    text = (
        HINTON.replace("teacher t", "teacher big")
        .replace("student s", "student small")
        .replace("t.logits", "big.logits")
        .replace("s.logits", "small.logits")
    )
    changes = diff(LIBRARY["hinton"], lower_text(text).method)
    assert [(c.op, c.what, c.old_name, c.name) for c in changes] == [
        ("renamed", "role", "t", "big"),
        ("renamed", "role", "s", "small"),
    ]
    assert render(changes).endswith("no differences in meaning (names only)")


def test_equal_values_are_no_change() -> None:
    text = HINTON.replace("param alpha = 0.9", "param alpha = 9 / 10").replace(
        "alpha * T^2", "alpha * T * T"
    )
    assert diff(LIBRARY["hinton"], lower_text(text).method) == []


def test_a_trained_teacher_is_named_and_ranks_hinton_first() -> None:
    """Issue 10: with the teacher made trainable, the diff names the role state and the
    nearest library method is still Hinton (CS-KD ranked above it before)."""
    text = HINTON.replace("teacher t", "teacher t trained").replace(
        "  supervise ce:", "  supervise ce_t: t.logits with cross_entropy\n  supervise ce:"
    )
    m = lower_text(text).method
    changes = diff(LIBRARY["hinton"], m)
    assert [c.render() for c in changes if c.what == "role"] == [
        "~ role `t`: mode: frozen -> trained"
    ]
    ident = identify(m)
    hinton, *others = ident.nearest
    assert hinton.method == "hinton"
    assert all(hinton.score > x.score for x in others)  # CS-KD ranked above it before
    assert any("mode frozen -> trained" in d for d in hinton.differences)


MULTI = """method one {
  teacher t
  student s
  transfer kd: softmax(T=4) from t.logits to s.logits with kl weight 14.4
  supervise ce: s.logits with cross_entropy weight 0.1
}

method two {
  teacher big
  student small
  transfer soft: from softmax(big.logits, T=4) to softmax(small.logits, T=4) with kl weight 0.9 * 16
  supervise hard: small.logits with cross_entropy weight 1 - 9 / 10
}
"""


def test_cli_diff_on_a_file_of_several_methods(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.kd"  # type: ignore[operator]
    path.write_text(MULTI)
    assert main(["diff", str(path), "specs/hinton.kd"]) == 2
    err = capsys.readouterr().err
    assert "defines 2 methods (one, two)" in err
    assert f"`{path}:one`" in err
    assert main(["diff", f"{path}:one", f"{path}:two"]) == 0
    out = capsys.readouterr().out
    assert "> role `t` renamed to `big`" in out
    assert "> term `kd` renamed to `soft`" in out
    assert out.rstrip().endswith("no differences in meaning (names only)")
    assert main(["diff", f"{path}:three", "specs/hinton.kd"]) == 2
    assert "no method `three`" in capsys.readouterr().err


def test_cli_identify_on_a_file_of_several_methods(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.kd"  # type: ignore[operator]
    path.write_text(MULTI)
    assert main(["identify", str(path)]) == 2
    assert "defines 2 methods (one, two)" in capsys.readouterr().err
    assert main(["identify", f"{path}:two"]) == 0
    assert capsys.readouterr().out.startswith("`two` is `hinton` (exact match)")
    assert main(["identify", str(path), "--method", "one"]) == 0
    assert "`one` is" in capsys.readouterr().out
