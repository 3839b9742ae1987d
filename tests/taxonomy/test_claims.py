"""KD311: claims are checked against the labels derived from the graph."""

from __future__ import annotations

import pytest
from taxonomy_cases import SKETCHES, library_names, library_text

from kdspec.api import check_source
from kdspec.diagnostics import Diagnostic
from kdspec.source import SourceFile


def _diags(text: str, name: str = "claims.kd") -> tuple[SourceFile, list[Diagnostic]]:
    source = SourceFile(name, text)
    return source, check_source(source)[1]


def _kd311(text: str) -> list[Diagnostic]:
    return [d for d in _diags(text)[1] if d.code == "KD311"]


def _with_claim(text: str, claim: str) -> str:
    head, _, _ = text.rstrip().rpartition("}")
    return f"{head}  {claim}\n}}\n"


def _line(source: SourceFile, d: Diagnostic) -> int:
    assert d.span is not None
    return source.line_col(d.span.start)[0]


def test_a_correct_claim_passes() -> None:
    """Hinton KD: a frozen teacher's logits -> offline, response; one stage."""
    text = _with_claim(library_text("hinton"), "claim stages = single")
    assert _kd311(text) == []


def test_a_wrong_scheme_claim_points_at_the_claim() -> None:
    """A teacher trained in the same stage as its student is online, whatever the claim says."""
    text = _with_claim(SKETCHES["online"], "claim scheme = offline")
    source, diags = _diags(text)
    (d,) = [d for d in diags if d.code == "KD311"]
    assert d.message == (
        "claims `offline`, but the graph shows `online`: teacher `t` is trained in stage "
        "`joint` together with `s`"
    )
    assert _line(source, d) == text.splitlines().index("  claim scheme = offline") + 1
    assert d.labels[0].message == "the graph shows `online`"
    # The stage that makes it online is pointed at too, and the evidence is a note.
    assert any(not lb.primary for lb in d.labels)
    assert any("online" in n for n in d.notes)
    assert d.help is not None and "claim scheme = online" in d.help


def test_a_claimed_value_the_graph_lacks() -> None:
    text = _with_claim(library_text("hinton"), "claim topology = mutual")
    (d,) = _kd311(text)
    assert d.message == (
        "claims `mutual`, but the graph shows `single_teacher`: `s` learns from one teacher, `t`"
    )
    assert d.labels[0].message == "the graph shows `single_teacher`"


def test_a_claim_missing_from_a_larger_set() -> None:
    """Claiming a value the graph lacks, with the found values all claimed too."""
    text = _with_claim(library_text("hinton"), "claim knowledge = response, relation")
    (d,) = _kd311(text)
    assert d.message == "claims `relation`, but the graph shows `response`"


@pytest.mark.parametrize(
    ("claim", "ok"),
    [
        ("claim knowledge = feature, response", True),
        ("claim knowledge = response, feature", True),  # a set: order does not matter
        ("claim knowledge = response", False),  # the hint is feature knowledge
        ("claim knowledge = feature, response, relation", False),
        ("claim stages = multi", True),
        ("claim stages = single", False),
        ("claim topology = single_teacher", True),
    ],
)
def test_knowledge_claims_must_list_every_category(claim: str, ok: bool) -> None:
    """FitNets: hint (feature) then KD (response); a claim lists exactly the categories found."""
    base = library_text("fitnets").replace("  claim knowledge = feature, response\n", "")
    assert bool(_kd311(_with_claim(base, claim))) is not ok


def test_ban_claims_both_offline_and_self() -> None:
    """Each generation is offline; the generations make it self-distillation."""
    assert _kd311(_with_claim(SKETCHES["ban"], "claim scheme = offline, self")) == []
    (d,) = _kd311(_with_claim(SKETCHES["ban"], "claim scheme = self"))
    # Issue 10: `self` holds; the headline names the value the claim leaves out.
    assert d.message == (
        "the claim leaves out `offline`: teacher `t` is trained only in stage `teacher`, and "
        "frozen when `s` learns from it"
    )


def test_mean_teacher_is_self_not_online() -> None:
    assert _kd311(_with_claim(library_text("mean_teacher"), "claim topology = self")) == []
    (d,) = _kd311(_with_claim(library_text("mean_teacher"), "claim scheme = online"))
    assert "claims `online`" in d.message


def test_unknown_claims_are_kd212_only() -> None:
    text = _with_claim(library_text("hinton"), "claim flavour = vanilla")
    codes = {d.code for d in _diags(text)[1]}
    assert "KD212" in codes
    assert "KD311" not in codes


@pytest.mark.parametrize("name", library_names())
def test_library_claims_agree_with_the_graph(name: str) -> None:
    source, diags = _diags(library_text(name), f"specs/{name}.kd")
    wrong = [f"{_line(source, d)}: {d.message}" for d in diags if d.code == "KD311"]
    assert not wrong, wrong
