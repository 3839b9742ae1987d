"""Front-end messages a new user meets first (issue 16, smaller defects)."""

from __future__ import annotations

import pytest

from kdspec.api import check_source
from kdspec.cli.main import main
from kdspec.source import SourceFile


def _errors(text: str) -> list[tuple[str, str, str]]:
    _, diags = check_source(SourceFile("m.kd", text))
    return [(d.code, d.message, d.help or "") for d in diags if d.severity.name == "ERROR"]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("studnt s", "student"),
        ("tranfer kd: softmax(T=4) from t.logits to s.logits with kl", "transfer"),
    ],
)
def test_a_misspelled_statement_keyword_gets_a_did_you_mean(typo: str, meant: str) -> None:
    (err,) = _errors(f"method m {{\n  teacher t\n  {typo}\n}}\n")
    assert err[0] == "KD102" and "expected a statement" in err[1]
    assert err[2] == f"did you mean `{meant}`?"


def test_other_libraries_names_point_to_ours() -> None:
    errs = _errors(
        "method m {\n  teacher t\n  student s\n"
        "  transfer softmax(T=4) from t.logits to s.logits with kl_div\n}\n"
    )
    assert ("KD203", "unknown function `kl_div`", "kdspec calls it `kl`") in errs


def test_an_undefined_parameter_is_one_error_with_the_declaration_to_add() -> None:
    text = """method m {
  teacher t
  student s
  transfer kd: softmax(T=4) from t.logits to s.logits with kl weight alpha
  supervise ce: s.logits with cross_entropy weight 1 - alpha
}"""
    assert _errors(text) == [("KD202", "unknown name `alpha`", "declare it: `param alpha = ...`")]


def test_a_missing_role_says_how_to_declare_it() -> None:
    text = (
        "method m {\n  teacher t\n  transfer kd: softmax(T=4) from t.logits to s.logits with kl\n}"
    )
    (err,) = [e for e in _errors(text) if e[0] == "KD202"]
    assert "declare it: `student s`" in err[2]


def test_name_clash_help_mentions_stages() -> None:
    text = """method m {
  teacher t
  student s
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  stage kd { losses kd }
}"""
    (err,) = [e for e in _errors(text) if e[0] == "KD201"]
    assert "stage" in err[2]


def test_check_and_show_accept_library_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "hinton", "fitnets"]) == 0
    assert "checked 2 files: no problems found" in capsys.readouterr().out
    assert main(["show", "hinton"]) == 0
    assert capsys.readouterr().out.lstrip().startswith("# Hinton")
    assert main(["show"]) == 0
    assert "fitnets" in capsys.readouterr().out.split()
    assert main(["show", "nosuch"]) == 2


def test_taxonomy_of_one_spec_is_one_line_per_dimension(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxonomy", "hinton"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["method", "hinton"]
    assert max(map(len, lines)) < 100
