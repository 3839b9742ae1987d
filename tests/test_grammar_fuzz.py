"""Hypothesis fuzzing of the parser, the formatter and the diagnostic renderer.

Properties (house style B4):
1. parsing any text gives a syntax tree or KD1xx diagnostics with valid spans, never an exception;
2. for text that parses, ``parse(format_text(x)) == parse(x)``, formatting is idempotent and every
   comment survives;
3. the renderer is total over arbitrary text, spans and messages;
4. a one-character edit of a library spec or golden input gives a tree or diagnostics only.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from kdspec.diagnostics import Diagnostic, Label, Severity, render_many
from kdspec.source import SourceFile, Span
from kdspec.syntax import ast, parse_text, try_parse
from kdspec.syntax.fmt import format_module, format_text, quote
from kdspec.syntax.grammar import grammar_text

ROOT = Path(__file__).parent.parent
SYNTAX_CODES = {"KD101", "KD102", "KD103"}
FAST = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr")


def _keywords() -> set[str]:
    return {
        t.pattern.value
        for t in _lark().terminals
        if t.pattern.type == "str" and t.pattern.value.isidentifier()
    }


def _nodes(node: Any) -> Any:
    if isinstance(node, tuple):
        for item in node:
            yield from _nodes(item)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        yield node
        for f in dataclasses.fields(node):
            yield from _nodes(getattr(node, f.name))


def check_parse(text: str) -> ast.Module | None:
    """Property 1: a tree with in-bounds spans, or syntax diagnostics with in-bounds spans."""
    source = SourceFile("fuzz.kd", text)
    module, diagnostics = try_parse(source)
    if module is None:
        assert diagnostics
        for d in diagnostics:
            assert d.code in SYNTAX_CODES, d
            assert d.span is not None
            assert 0 <= d.span.start <= d.span.end <= len(text)
        assert render_many(diagnostics, "full")
        return None
    assert diagnostics == []
    for node in _nodes(module):
        span = getattr(node, "span", None)
        if span is not None:
            assert 0 <= span.start <= span.end <= len(text), (node, span)
    return module


def check_format(text: str, module: ast.Module) -> None:
    """Property 2: the formatter keeps the tree and the comments, and is a fixed point."""
    formatted = format_text(text)
    again = parse_text(formatted)
    assert again == module
    assert [c.text.rstrip() for c in again.comments] == [c.text.rstrip() for c in module.comments]
    assert format_text(formatted) == formatted
    assert formatted.endswith("\n") and not formatted.endswith("\n\n")
    # Without the source text comments lose their lines, but neither the tree nor a comment.
    blind = parse_text(format_module(module))
    assert blind == module
    assert [c.text.rstrip() for c in blind.comments] == [c.text.rstrip() for c in module.comments]


# ---------------------------------------------------------------------------------------------
# 1. whatever the grammar generates (tokens may run together: `teachert`), nothing crashes
# ---------------------------------------------------------------------------------------------


@FAST
@given(from_lark(_lark(), start="start"))
def test_generated_text_parses_or_reports(text: str) -> None:
    check_parse(text)


# ---------------------------------------------------------------------------------------------
# 2. tokens kept apart, comments and blank lines everywhere: the formatter round-trips
# ---------------------------------------------------------------------------------------------


def _spaced(s: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return s.map(lambda tok: f" {tok} ")


@cache
def _separated_tokens() -> dict[str, st.SearchStrategy[str]]:
    keywords = _keywords()
    explicit = {
        t.name: st.just(f" {t.pattern.value} ")
        for t in _lark().terminals
        if t.pattern.type == "str"
    }
    names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
    explicit["NAME"] = _spaced(names.filter(lambda n: n not in keywords))
    explicit["NUMBER"] = _spaced(
        st.from_regex(r"\d{1,3}(\.\d{1,2})?([eE][-+]?\d)?", fullmatch=True)
    )
    explicit["STRING"] = _spaced(
        st.text(st.characters(exclude_characters="\n"), max_size=6).map(quote)
    )
    explicit["COMMENT"] = st.from_regex(r"#[^\n]{0,12}", fullmatch=True).map(lambda c: f" {c}\n")
    explicit["WS"] = st.sampled_from([" ", "\n", "\n\n", "\n \n\n", "\t", "\r\n"])
    return explicit


@FAST
@given(from_lark(_lark(), start="start", explicit=_separated_tokens()))
def test_format_round_trips(text: str) -> None:
    module = check_parse(text)
    if module is not None:
        check_format(text, module)


@given(st.text(st.characters(exclude_characters="\n"), max_size=40))
def test_quote_round_trips(value: str) -> None:
    module = parse_text(f"method m {quote(value)} {{}}")
    assert module.methods[0].title == ast.String(value)


# ---------------------------------------------------------------------------------------------
# 3. the renderer is total
# ---------------------------------------------------------------------------------------------

_offsets = st.integers(min_value=-5, max_value=120)
_labels = st.builds(
    Label,
    span=st.builds(Span, _offsets, _offsets),
    message=st.text(max_size=20),
    primary=st.booleans(),
)


@given(
    text=st.text(max_size=120),
    has_source=st.booleans(),
    message=st.text(max_size=30),
    labels=st.lists(_labels, max_size=4),
    notes=st.lists(st.text(max_size=20), max_size=2),
    help_=st.none() | st.text(max_size=20),
    severity=st.sampled_from(list(Severity)),
    fmt=st.sampled_from(["full", "concise", "json"]),
    color=st.booleans(),
)
def test_renderer_is_total(
    text: str,
    has_source: bool,
    message: str,
    labels: list[Label],
    notes: list[str],
    help_: str | None,
    severity: Severity,
    fmt: str,
    color: bool,
) -> None:
    source = SourceFile("fuzz.kd", text) if has_source else None
    diagnostic = Diagnostic("KD102", severity, message, source, tuple(labels), tuple(notes), help_)
    assert isinstance(render_many([diagnostic, diagnostic], fmt, color), str)


# ---------------------------------------------------------------------------------------------
# 4. one-character edits of real specs
# ---------------------------------------------------------------------------------------------


def _corpus() -> list[Path]:
    files = sorted((ROOT / "specs").glob("*.kd"))
    files += sorted((ROOT / "tests" / "golden" / "parse").glob("*.kd"))
    files += sorted(p for p in (ROOT / "tests" / "golden" / "fmt").glob("*.kd"))
    return files


_EDIT_CHARS = st.sampled_from(list("{}()[]\":,.|@^*/+-=%#\n \\'_;$aZ09e")) | st.characters()


@st.composite
def _edited(draw: st.DrawFn) -> str:
    path = draw(st.sampled_from(_corpus()))
    text = path.read_text(encoding="utf-8")
    pos = draw(st.integers(0, len(text)))
    op = draw(st.sampled_from(["delete", "insert", "substitute"]))
    if op == "delete" or (op == "substitute" and pos == len(text)):
        return text[:pos] + text[pos + 1 :]
    char = draw(_EDIT_CHARS)
    return text[:pos] + char + text[pos + (op == "substitute") :]


@pytest.mark.skipif(not _corpus(), reason="no spec files to edit")
@FAST
@given(_edited())
def test_one_character_edits(text: str) -> None:
    module = check_parse(text)
    if module is not None:
        check_format(text, module)


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_corpus_formats(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    module = check_parse(text)
    assert module is not None, f"{path.name} does not parse"
    check_format(text, module)


# ---------------------------------------------------------------------------------------------
# Regressions found by the fuzzers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", ["view v", "subset s"])
def test_definition_without_initialiser(statement: str) -> None:
    module = parse_text(f"method m {{ {statement} }}")
    assert module.methods[0].body[0].init is None


def test_comment_text_may_hold_braces_and_quotes() -> None:
    text = 'method m { # { " }\n  stage a # {\n  { # }\n  }\n}\n'
    module = check_parse(text)
    assert module is not None
    check_format(text, module)
    assert re.search(r"stage a \{  # \}", format_text(text))
