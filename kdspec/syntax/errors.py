"""Lark's syntax errors turned into KD1xx diagnostics with a span, an expectation and help."""

from __future__ import annotations

import re

from lark import Lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from kdspec.diagnostics import Diagnostic, error
from kdspec.source import SourceFile, Span

# Which statement a keyword starts, and how that statement reads (for `help:`).
STATEMENT_FORMS = {
    "transfer": "transfer [label:] [knowledge] from <teacher expr> to <student expr> "
    "with <loss> [weight <expr>] [on <subset>]",
    "supervise": "supervise [label:] <student expr> with <loss> [weight <expr>]",
    "param": "param <name> = <value>",
    "teacher": "teacher <name>[, <name>...] [frozen | trained | = ema(...) | sees <view>]",
    "student": "student <name>[, <name>...] [sees <view>]",
    "peer": "peer <name>, <name>...",
    "assistant": "assistant <name>",
    "stage": "stage <name> [for <n> epochs|steps|%] [repeat <n>] { train ...  losses ... }",
    "use": "use <method>(<param>=<value>, ...) [as <name>] [only <term>, ...]",
    "claim": "claim <dimension> = <value>[, <value>...]",
    "method": 'method <name> ["title"] { <statements> }',
    "let": "let <name> = <expr>",
    "ensemble": "ensemble <name> = mean(<role>, <role>, ...)",
    "view": "view <name> [= <augmentation>(...)]",
    "subset": "subset <name> [= <selection>(...)]",
    "cite": 'cite "<authors, venue, arXiv id>"',
}


_COMMENT = re.compile(r"#[^\n]*")
# A statement keyword is the first word of a line or follows a brace.
_STATEMENT_START = re.compile(r"(?:^|[\n{}])[ \t]*([A-Za-z_][A-Za-z0-9_]*)")


def _describe_terminal(lark: Lark, name: str) -> str:
    if name == "$END":
        return "end of file"
    if name in {"NAME"}:
        return "a name"
    if name == "NUMBER":
        return "a number"
    if name == "STRING":
        return "a string"
    try:
        pattern = lark.get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if pattern.type == "str":
        return f"`{pattern.value}`"
    return name.lower()


def _describe_token(token_type: str, value: str) -> str:
    if token_type == "$END":
        return "end of file"
    if token_type == "NAME":
        return f"name `{value}`"
    if token_type == "NUMBER":
        return f"number `{value}`"
    if token_type == "STRING":
        return f"string {value}"
    if value.isidentifier():
        return f"keyword `{value}`"
    return f"`{value}`"


def _statement_keyword(text: str, offset: int) -> str | None:
    """The keyword of the statement that ``offset`` lies in: the last one written before it."""
    before = _COMMENT.sub("", text[:offset])
    words = [m.group(1) for m in _STATEMENT_START.finditer(before) if m.group(1) in STATEMENT_FORMS]
    return words[-1] if words else None


def _format_expected(expected: list[str]) -> str:
    if len(expected) > 6:
        expected = [*expected[:6], "..."]
    if len(expected) == 1:
        return expected[0]
    return ", ".join(expected[:-1]) + " or " + expected[-1]


_DEEP_STACK = 200


def syntax_diagnostic(exc: UnexpectedInput, source: SourceFile, lark: Lark) -> Diagnostic:
    """One diagnostic for a lark syntax error (KD101 bad character, KD102 token, KD103 EOF)."""
    text = source.text
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        message = f"unexpected character `{char}`"
        hint = None
        if char in "'":
            hint = 'strings use double quotes: "layer3.1.conv2"'
        elif char == ";":
            hint = "statements need no separator; remove the `;`"
        return error("KD101", message, source, Span(pos, pos + 1), "not valid here", help=hint)
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        end = len(text.rstrip())
        expected = sorted(_describe_terminal(lark, t) for t in exc.expected)
        open_braces = text.count("{") - text.count("}")
        hint = "a `}` is missing: every `{` needs a matching `}`" if open_braces > 0 else None
        return error(
            "KD103",
            "unexpected end of file",
            source,
            Span(max(end - 1, 0), end),
            f"expected {_format_expected(expected)} after this",
            help=hint,
        )
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    start = token.start_pos or 0
    span = Span(start, token.end_pos if token.end_pos is not None else start + 1)
    # `accepts` replays every terminal on a copy of the parser stack: cheap normally, but
    # quadratic-like on a stack thousands deep (5,000 unclosed `[`): then the table's
    # `expected` set is used (same answer up to reductions, instant).
    stack = getattr(getattr(exc.interactive_parser, "parser_state", None), "state_stack", ())
    deep = len(stack) > _DEEP_STACK
    expected_names = sorted(exc.expected if deep else (exc.accepts or exc.expected))
    expected = sorted({_describe_terminal(lark, t) for t in expected_names})
    # Name the keywords that could come next; operators that could extend an expression are noise.
    keywords = [e for e in expected if e.strip("`").isidentifier()]
    if keywords:
        expected = keywords
    found = _describe_token(token.type, str(token))
    keyword = _statement_keyword(text, start)
    hint = f"{keyword} reads `{STATEMENT_FORMS[keyword]}`" if keyword else None
    if token.type != "NAME" and str(token).isidentifier() and "a name" in expected:
        hint = f"`{token}` is a keyword and cannot be used as a name"
    return error(
        "KD102",
        f"expected {_format_expected(expected)}, found {found}",
        source,
        span,
        f"expected {_format_expected(expected)} here" if len(expected) <= 3 else "unexpected here",
        help=hint,
    )
