"""Method diffs: matched by name, then by content; stage views of one spec."""

from __future__ import annotations

import pytest
from taxonomy_cases import SKETCHES, library_text, lower_text

from kdspec.cli.main import main
from kdspec.ir import models as ir
from kdspec.taxonomy.diff import Change, diff, render, stage_view


def _method(text: str, **kw: object) -> ir.Method:
    return lower_text(text, **kw).method  # type: ignore[arg-type]


def _ops(changes: list[Change]) -> list[tuple[str, str, str]]:
    return [(c.op, c.what, c.name) for c in changes]


def test_a_method_against_itself() -> None:
    hinton = _method(library_text("hinton"))
    assert diff(hinton, hinton) == []
    assert render([]) == "no differences"


def test_a_renamed_term_is_renamed() -> None:
    """Identical content under another label is a rename, not a removal and an addition."""
    a = _method(library_text("hinton"))
    b = _method(library_text("hinton").replace("transfer kd:", "transfer soft:"))
    (change,) = diff(a, b)
    assert (change.op, change.what, change.old_name, change.name) == (
        "renamed",
        "term",
        "kd",
        "soft",
    )
    assert change.render() == "> term `kd` renamed to `soft`"


def test_a_renamed_and_changed_term_is_paired_by_its_taps() -> None:
    a = _method(library_text("hinton"))
    b = _method(
        library_text("hinton")
        .replace("transfer kd: softmax(T)", "transfer soft: softmax(T)")
        .replace("with kl", "with soft_ce")
    )
    (change,) = diff(a, b)
    assert (change.op, change.old_name, change.name) == ("renamed", "kd", "soft")
    assert change.details == ("loss: kl -> soft_ce",)


def test_hinton_against_dkd() -> None:
    """DKD splits Hinton's KL into target and non-target parts, warmed up."""
    changes = diff(_method(library_text("hinton")), _method(SKETCHES["dkd"]))
    ops = _ops(changes)
    assert ("removed", "term", "kd") in ops
    assert ("added", "term", "tckd") in ops
    assert ("added", "term", "nckd") in ops
    assert ("changed", "term", "ce") in ops
    assert ("changed", "param", "alpha") in ops
    assert ("added", "param", "beta") in ops
    text = render(changes, "hinton", "dkd")
    assert "+ term `tckd`: transfer binary_target(T=T) from t.logits to s.logits with kl" in text
    assert "~ term `ce`: weight: 1 - alpha -> 1" in text


def test_the_two_stages_of_fitnets() -> None:
    """The hint stage against the KD stage: terms swap, the stage trains more of `s`."""
    fitnets = _method(library_text("fitnets"))
    hints, distill = stage_view(fitnets, "hints"), stage_view(fitnets, "distill")
    assert [t.name for t in hints.terms] == ["hint"]
    assert [t.name for t in distill.terms] == ["kd", "ce"]
    changes = diff(hints, distill)
    assert _ops(changes) == [
        ("removed", "term", "hint"),
        ("added", "term", "kd"),
        ("added", "term", "ce"),
        ("renamed", "stage", "distill"),
    ]
    lines = render(changes).splitlines()
    assert lines[0].startswith("- term `hint`: transfer from t.stage[2] to regressor(s.stage[2])")
    assert lines[1].startswith("+ term `kd`: transfer softmax(T=T) from t.logits to s.logits")
    assert lines[3:] == [
        "> stage `hints` renamed to `distill`:",
        "    duration: hint_epochs % -> -",
        "    train: s.stage[..2], hint -> -",
    ]


def test_stage_view_keeps_only_the_roles_a_stage_uses() -> None:
    takd = _method(library_text("takd"))
    first = stage_view(takd, "assistant")
    assert sorted(r.name for r in first.roles) == ["t", "ta"]
    assert sorted(r.name for r in stage_view(takd, "student").roles) == ["s", "ta"]
    with pytest.raises(KeyError):
        stage_view(takd, "nope")


def test_roles_stages_and_claims() -> None:
    a = _method(library_text("hinton"))
    b = _method(library_text("multi_teacher"))
    ops = _ops(diff(a, b))
    assert ("renamed", "role", "t1") in ops  # `t` and `t1` are the same frozen teacher
    assert ("added", "role", "t2") in ops
    assert ("added", "ensemble", "teachers") in ops
    assert ("changed", "term", "kd") in ops
    assert ("added", "claim", "topology") in ops


def test_stage_order() -> None:
    text = library_text("takd")
    swapped = text.replace("stage assistant for 50%", "stage zz for 50%")
    ops = _ops(diff(_method(text), _method(swapped)))
    assert ops == [("renamed", "stage", "zz")]


def test_cli_diff_of_two_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "specs/fitnets.kd@hints", "specs/fitnets.kd@distill"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "--- specs/fitnets.kd @ stage hints\n+++ specs/fitnets.kd @ stage distill\n"
    )
    assert "- term `hint`" in out


def test_cli_diff_unknown_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "specs/fitnets.kd@nope", "specs/hinton.kd"]) == 2
    assert "stages: hints, distill" in capsys.readouterr().err


def test_cli_diff_of_a_library_name_and_its_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "hinton", "specs/hinton.kd"]) == 0
    assert capsys.readouterr().out.strip().endswith("no differences")
