"""The canonical form: equal computations give equal IR, different ones never do."""

from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rewrites import EDITS, PRESERVING
from taxonomy_cases import library_names, library_text, lower_text, rename_and_reorder

import kdspec.ir.canonical
import kdspec.ir.traverse
from kdspec.ir import models as ir
from kdspec.ir.canonical import canonicalize, equivalent, fold, semantic_key
from kdspec.ir.printer import expr_text

LIBRARY = {name: lower_text(library_text(name)).method for name in library_names()}
HINTON = library_text("hinton")


def test_doctests() -> None:
    for module in (kdspec.ir.canonical, kdspec.ir.traverse):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpha * T * T", "alpha * T^2"),
        ("T * alpha * T", "alpha * T^2"),
        ("T^2 * alpha", "alpha * T^2"),
        ("9 / 10", "0.9"),
        ("0.1 + 0.2", "0.3"),
        ("1 - alpha", "1 - alpha"),
        ("-alpha + 1", "1 - alpha"),
        ("alpha / 2 * 4", "2 * alpha"),
        ("(alpha + 1) * 2", "2 + 2 * alpha"),
        ("alpha - alpha", "0"),
        ("beta / T^2 * T^2", "beta"),
    ],
)
def test_arithmetic_folds_to_one_spelling(text: str, expected: str) -> None:
    spec = HINTON.replace("weight alpha * T^2", f"weight {text}").replace(
        "param T = 4", "param T = 4\n  param beta = 1"
    )
    term = canonicalize(lower_text(spec).method).term("kd")
    assert term is not None
    assert expr_text(term.weight) == expected


def test_fold_keeps_what_it_cannot_fold() -> None:
    e = ir.BinOp(
        op="/",
        left=ir.ParamRef(name="a"),
        right=ir.BinOp(op="+", left=ir.ParamRef(name="b"), right=ir.Num(value=1)),
    )
    assert expr_text(fold(e)) == "a / (b + 1)"


# The examples, each a respelling of Hinton KD.
RESPELLINGS = {
    "softmax on each side": HINTON.replace(
        "transfer kd: softmax(T) from t.logits to s.logits",
        "transfer kd: from softmax(t.logits, T) to softmax(s.logits, T=T)",
    ),
    "T * T": HINTON.replace("alpha * T^2", "alpha * T * T"),
    "9 / 10": HINTON.replace("param alpha = 0.9", "param alpha = 9 / 10"),
    "stopgrad on a frozen teacher": HINTON.replace("from t.logits", "from stopgrad(t.logits)"),
    "stopgrad above the softmax": HINTON.replace(
        "transfer kd: softmax(T) from t.logits to s.logits",
        "transfer kd: from stopgrad(softmax(t.logits, T)) to softmax(s.logits, T)",
    ),
    "a let": HINTON.replace("  transfer kd:", "  let soft = softmax(t.logits, T)\n  transfer kd:")
    .replace("transfer kd: softmax(T) from t.logits", "transfer kd: from soft")
    .replace("to s.logits with kl", "to softmax(s.logits, T) with kl"),
    "renamed and reordered": rename_and_reorder(
        HINTON, ["h2", "temp", "a", "big", "small", "soft", "hard"], [6, 5, 4, 3, 2, 1, 0]
    ),
    "explicit defaults": HINTON.replace("with kl weight", "with kl(reduction=batchmean) weight"),
    "one explicit stage": HINTON.replace(
        "  claim scheme", "  stage main { losses kd, ce }\n  claim scheme"
    ),
    "literal temperature": HINTON.replace("param T = 4\n", "")
    .replace("softmax(T)", "softmax(4)")
    .replace("alpha * T^2", "alpha * 16"),
}


@pytest.mark.parametrize("name", RESPELLINGS)
def test_respellings_of_hinton_are_equal(name: str) -> None:
    assert equivalent(LIBRARY["hinton"], lower_text(RESPELLINGS[name]).method)


def test_open_and_explicit_tap_ranges_are_equal() -> None:
    at = library_text("at")
    assert "stage[..]" in at
    assert equivalent(LIBRARY["at"], lower_text(at.replace("stage[..]", "stage[1..-1]")).method)
    assert not equivalent(LIBRARY["at"], lower_text(at.replace("stage[..]", "stage[2..]")).method)


def test_a_let_with_a_shared_adapter_stays() -> None:
    """ONE's branches are one module read by several terms: inlining would build several."""
    one = canonicalize(LIBRARY["one"])
    assert [x.name for x in one.lets] == ["extra", "gated"]


def test_names_are_kept_without_rename() -> None:
    c = canonicalize(LIBRARY["fitnets"])
    assert [t.name for t in c.terms] == ["hint", "kd", "ce"]
    assert [r.name for r in c.roles] == ["t", "s"]


def test_canonicalize_is_idempotent() -> None:
    for m in LIBRARY.values():
        once = canonicalize(m)
        assert canonicalize(once) == once
        sem = canonicalize(m, rename=True)
        assert canonicalize(sem, rename=True) == sem


def test_library_methods_are_pairwise_different() -> None:
    keys = {name: semantic_key(m) for name, m in LIBRARY.items()}
    assert len(set(keys.values())) == len(keys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(LIBRARY)),
    steps=st.lists(st.sampled_from(sorted(PRESERVING)), min_size=1, max_size=4),
    seed=st.integers(0, 10**6),
)
@example(name="dist", steps=["let", "values", "values"], seed=5)
def test_meaning_preserving_rewrites_are_equal(name: str, steps: list[str], seed: int) -> None:
    rng = random.Random(seed)
    m = LIBRARY[name]
    for step in steps:
        m = PRESERVING[step](m, rng)
    assert semantic_key(m) == semantic_key(LIBRARY[name]), steps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(LIBRARY)),
    edit=st.sampled_from(sorted(EDITS)),
    seed=st.integers(0, 10**6),
)
def test_semantic_edits_are_never_equal(name: str, edit: str, seed: int) -> None:
    rng = random.Random(seed)
    done = EDITS[edit](LIBRARY[name], rng)
    if done is None:
        return
    assert semantic_key(done[0]) != semantic_key(LIBRARY[name])
