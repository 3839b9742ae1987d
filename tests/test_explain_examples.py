"""`kdspec explain KDnnn` examples are real: the bad spec gives the code, the fixed one not."""

from __future__ import annotations

import pytest

from kdspec.api import check_source
from kdspec.diagnostics.codes import EXAMPLES, describe
from kdspec.source import SourceFile

# KD310 needs models (layer counts), KD504 is Python: their examples are checked to parse.
AT_CHECK = [c for c in EXAMPLES if c not in ("KD310", "KD504")]


def _codes(body: str) -> set[str]:
    head = "" if "teacher t" in body else "teacher t\n  student s\n  "
    text = f"method m {{\n  {head}{body}\n  supervise ce: s.logits with cross_entropy\n}}\n"
    _, diags = check_source(SourceFile("ex.kd", text))
    return {d.code for d in diags if d.severity.name == "ERROR"}


@pytest.mark.parametrize("code", AT_CHECK)
def test_the_bad_example_gives_the_code_and_the_fixed_one_does_not(code: str) -> None:
    bad, good = EXAMPLES[code]
    assert code in _codes(bad)
    assert code not in _codes(good)


def test_kd310_examples_parse_and_explain_shows_them() -> None:
    bad, good = EXAMPLES["KD310"]
    assert _codes(bad) == set() and _codes(good) == set()
    text = describe("KD310") or ""
    assert "map uniform" in text and "For example" in text
