"""Syntax errors: every broken statement reported once, help chosen by lark's match_examples."""

from __future__ import annotations

import pytest
from lark.exceptions import UnexpectedInput

from kdspec.source import SourceFile
from kdspec.syntax import try_parse
from kdspec.syntax.errors import EXAMPLES, MAX_SYNTAX_ERRORS, example_file, skip_statement
from kdspec.syntax.grammar import parser

CASES = [(ex, bad) for ex in EXAMPLES for bad in ex.bad]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda ex: ex.statement)
def test_every_good_example_parses(example) -> None:
    lark, _ = parser()
    lark.parse(example_file(example, example.good))


@pytest.mark.parametrize(("example", "bad"), CASES, ids=[b for _, b in CASES])
def test_every_bad_snippet_fails_and_is_helped_by_its_own_example(example, bad) -> None:
    lark, _ = parser()
    with pytest.raises(UnexpectedInput):
        lark.parse(example_file(example, bad))
    _, diags = try_parse(SourceFile("bad.kd", example_file(example, bad)))
    assert len(diags) == 1, [d.message for d in diags]
    if diags[0].code == "KD102" and "is a keyword" not in (diags[0].help or ""):
        assert diags[0].help == f"for example: `{example.good}`"


def test_each_broken_statement_is_reported_once_in_file_order() -> None:
    text = """method kd {
  teacher t
  student s
  param T 4
  transfer kd: from t.logits s.logits with kl
  supervise ce: s.logits with cross_entropy
  let hint conv1x1(s.stage[2])
}
"""
    _, diags = try_parse(SourceFile("m.kd", text))
    lines = [d.source.line_col(d.span.start)[0] for d in diags if d.source and d.span]
    assert [d.code for d in diags] == ["KD102"] * 3
    assert lines == [4, 5, 7]  # the good `supervise` in between is not reported


def test_errors_in_two_methods_and_a_bad_character() -> None:
    text = "method a {\n  teacher t;\n}\nmethod b {\n  student\n}\n"
    _, diags = try_parse(SourceFile("m.kd", text))
    assert [d.code for d in diags] == ["KD101", "KD102"]


def test_a_file_of_errors_stops_at_the_cap() -> None:
    body = "\n".join("  param p 1" for _ in range(MAX_SYNTAX_ERRORS + 5))
    _, diags = try_parse(SourceFile("m.kd", f"method m {{\n{body}\n}}\n"))
    assert len(diags) == MAX_SYNTAX_ERRORS


def test_recovery_reparses_at_most_its_budget() -> None:
    """Each syntax error costs a parse of the file up to it: a large file full of errors reports
    fewer of them rather than re-parsing megabytes."""
    from kdspec.syntax import RECOVERY_BUDGET, _parse_or_errors
    from kdspec.syntax.errors import error_offset

    lark, _ = parser()
    parsed: list[int] = []  # how far each parse got: to its error

    class Counting:
        def parse(self, text: str) -> object:
            try:
                return lark.parse(text)
            except UnexpectedInput as exc:
                parsed.append(error_offset(exc))
                raise

        def __getattr__(self, name: str) -> object:
            return getattr(lark, name)

    padding = "  # " + "x" * 2000 + "\n"
    body = "".join(f"  param p 1\n{padding}" for _ in range(MAX_SYNTAX_ERRORS))
    source = SourceFile("m.kd", f"method m {{\n{body}}}\n")
    _, diags = _parse_or_errors(source, Counting())  # type: ignore[arg-type]
    assert 1 <= len(diags) < MAX_SYNTAX_ERRORS
    assert sum(parsed[:-1]) <= RECOVERY_BUDGET < sum(parsed)


def test_skip_statement_keeps_lines_and_offsets() -> None:
    text = "method m {\n  param T 4\n  teacher t\n}\n"
    out = skip_statement(text, text.index("4"))
    assert out is not None and len(out) == len(text)
    assert out.splitlines()[1].strip() == "" and out.splitlines()[2] == "  teacher t"
