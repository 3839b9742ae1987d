"""Lark's syntax errors turned into KD1xx diagnostics with a span, an expectation and help."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from lark import Lark, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from kdspec.diagnostics import Diagnostic, error
from kdspec.source import SourceFile, Span


@dataclass(frozen=True)
class Example:
    """How one statement is written, and how it is written wrong.

    ``good`` is shown in the ``help:`` of a syntax error whose parser state matches one of the
    ``bad`` snippets (lark's ``match_examples``): the parser, not a second description of the
    grammar, decides which statement a user was writing. A test parses every ``good`` and
    checks that every ``bad`` fails.
    """

    statement: str
    good: str
    bad: tuple[str, ...]
    whole_file: bool = False  # the snippets are files, not statements inside a method


EXAMPLES: tuple[Example, ...] = (
    Example(
        "transfer",
        "transfer kd: softmax(T=4) from t.logits to s.logits with kl weight 16",
        (
            "transfer kd: from t.logits s.logits with kl",
            "transfer hint: from t.stage[3] s.stage[2] with mse",
            'transfer hint: from t."layer3" s."layer2" with mse',
            "transfer kd: from softmax(t.logits) softmax(s.logits) with kl",
            "transfer kd: from t.logits to s.logits kl",
            "transfer from: from t.logits to s.logits with kl",
            "transfer kd: softmax(T=4 from t.logits to s.logits with kl",
            "transfer kd: from t.logits to s.logits with kl(T=4",
            "transfer kd: from t.logits to s.logits with kl(4",
            "transfer kd: from conv1x1(t.stage[1] to s.stage[1] with mse",
            "transfer kd: t.logits to s.logits with kl",
            "transfer kd: from t.logits to s.logits with kl weight",
            "transfer kd: from t.stage[3] to s.stage[2] map with mse",
        ),
    ),
    Example(
        "supervise",
        "supervise ce: s.logits with cross_entropy weight 0.1",
        (
            "supervise ce: s.logits cross_entropy",
            "supervise ce: from.logits with cross_entropy",
            "supervise ce: s.logits with",
        ),
    ),
    Example("param", "param T = 4", ("param T 4", "param = 4", "param T =")),
    Example(
        "role",
        "teacher big = ema(s, decay=0.999)",
        ("teacher", "student = ", "teacher big = ema(s, decay=0.999", "peer a b"),
    ),
    Example(
        "let",
        "let hint = conv1x1(s.stage[2])",
        ("let hint conv1x1(s.stage[2])", "let = conv1x1(s.stage[2])", "let hint ="),
    ),
    Example(
        "stage",
        "stage warmup for 10 epochs { train s  losses kd }",
        (
            "stage warmup for epochs { train s }",
            "stage warmup for 10 { train s }",
            "stage { train s }",
            "stage warmup { train }",
        ),
    ),
    Example("use", "use hinton(T=2) as kd", ("use hinton(T=2 as kd", "use (T=2)", "use hinton as")),
    Example(
        "claim",
        "claim knowledge = response",
        ("claim knowledge response", "claim = response", "claim knowledge ="),
    ),
    Example(
        "ensemble",
        "ensemble both = mean(t, s)",
        ("ensemble both mean(t, s)", "ensemble = mean(t, s)"),
    ),
    Example("data", "subset few = exclude_classes(1)", ("subset few exclude_classes(1)",)),
    Example("cite", 'cite "Hinton et al. 2015, arXiv:1503.02531"', ("cite Hinton",)),
    Example(
        "method",
        'method hinton "Distilling the knowledge in a neural network" { teacher t  student s }',
        ("method { teacher t }", "method m teacher t }", 'method m "title" "again" { }'),
        whole_file=True,
    ),
)


def example_file(example: Example, snippet: str) -> str:
    """A snippet as the file it is matched in (statements go inside a method)."""
    if example.whole_file:
        return snippet + "\n"
    return f"method m {{\n  teacher t\n  student s\n  {snippet}\n}}\n"


# Words that begin a statement: after a syntax error, parsing resumes at the next line that
# starts with one of them (or with `}`), so each broken statement is reported once.
STATEMENT_KEYWORDS = frozenset(
    [
        "method",
        "import",
        "param",
        "teacher",
        "student",
        "assistant",
        "peer",
        "ensemble",
        "view",
        "subset",
        "let",
        "transfer",
        "supervise",
        "stage",
        "use",
        "claim",
        "cite",
        "train",
        "freeze",
        "losses",
        "handoff",
    ]
)
# The statement keywords in the order a method is usually written (for "expected" lists).
_STATEMENT_ORDER = (
    "teacher",
    "student",
    "assistant",
    "peer",
    "transfer",
    "supervise",
    "param",
    "let",
    "ensemble",
    "view",
    "subset",
    "stage",
    "use",
    "claim",
    "cite",
    "train",
    "freeze",
    "losses",
    "handoff",
    "method",
    "import",
)
MAX_SYNTAX_ERRORS = 20
_COMMENT = re.compile(r"#[^\n]*")


def _statement_lines(text: str) -> list[int]:
    """Offsets of the first token of every line that starts a statement or closes a block."""
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        word = stripped.split(None, 1)[0] if stripped.strip() else ""
        if word.startswith("}") or word.split("(")[0] in STATEMENT_KEYWORDS:
            out.append(pos + len(line) - len(stripped))
        pos += len(line)
    return out


def skip_statement(text: str, offset: int) -> str | None:
    """``text`` with the statement around ``offset`` blanked out (lines and offsets kept).

    The statement runs from the last statement start before ``offset`` to the next one at or
    after it. None when nothing would be blanked or nothing would be left to parse.
    """
    starts = _statement_lines(text)
    begin = max((s for s in starts if s < offset), default=text.rfind("\n", 0, offset) + 1)
    end = min((s for s in starts if s >= offset and s > begin), default=len(text))
    if end <= begin:
        return None
    # a broken block header (`method m teacher t {`, `stage x for {`) takes its block with it
    depth = text.count("{", begin, end) - text.count("}", begin, end)
    while depth > 0 and end < len(text):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    blank = "".join(c if c == "\n" else " " for c in text[begin:end])
    rest = text[:begin] + blank + text[end:]
    return rest if _COMMENT.sub("", rest).strip() else None


def error_offset(exc: UnexpectedInput) -> int:
    """Where a lark error happened, as an offset into the text."""
    if isinstance(exc, UnexpectedToken) and exc.token.start_pos is not None:
        return int(exc.token.start_pos)
    return int(exc.pos_in_stream or 0)


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


def _listed(terminals: Iterable[str]) -> list[str]:
    """The terminals an error lists: not `if`, which starts an expression wherever a name or a
    number may (naming it alone would send the reader to write a condition)."""
    return [t for t in terminals if t != "IF"]


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


@cache
def _example_table() -> dict[str, list[str]]:
    return {
        f"{ex.statement}\0{ex.good}": [example_file(ex, bad) for bad in ex.bad] for ex in EXAMPLES
    }


@cache
def _example_parser(lark: Lark) -> Callable[[str], Tree[Any]]:
    """``lark.parse`` for the example snippets, each parsed once per process.

    ``match_examples`` parses every bad example for every syntax error: 20 errors meant 880
    parses and over a second per file. The examples never change, so their errors are kept
    and raised again (the same exception objects, so matching is exactly lark's).
    """
    seen: dict[str, UnexpectedInput | Tree[Any]] = {}

    def parse(text: str) -> Tree[Any]:
        if text not in seen:
            try:
                seen[text] = lark.parse(text)
            except UnexpectedInput as exc:
                seen[text] = exc
        found = seen[text]
        if isinstance(found, UnexpectedInput):
            _RAISED.append(found)
            raise found.with_traceback(None)  # else every raise adds its frames to the last
        return found

    return parse


# The example errors `_example_parser` raised during the current `_matching_example` call.
_RAISED: list[UnexpectedInput] = []


def _matching_example(exc: UnexpectedInput, lark: Lark) -> str | None:
    """The right way to write the statement the parser was in, found by ``match_examples``."""
    table = _example_table()
    parse = _example_parser(lark)
    try:
        label = exc.match_examples(parse, table, token_type_match_fallback=True)
    except TypeError:  # lark 1.2 formats a debug line with %d on a ParserState state
        label = exc.match_examples(parse, table, True, use_accepts=False)
    finally:
        # A raise attaches the frames that handled it (which hold this file's tokens and
        # trees) and the error being handled to the kept object: a long-lived process
        # (`kdspec lsp`, the fuzz worker) kept every checked file's parse alive through them.
        for kept in _RAISED:
            kept.__traceback__ = kept.__context__ = None
        _RAISED.clear()
    return None if label is None else label.split("\0")[1]


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
        expected = sorted(_describe_terminal(lark, t) for t in _listed(exc.expected))
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
    expected = sorted({_describe_terminal(lark, t) for t in _listed(expected_names)})
    # Name the keywords that could come next; operators that could extend an expression are noise.
    keywords = [e for e in expected if e.strip("`").isidentifier()]
    if keywords:
        expected = keywords
    found = _describe_token(token.type, str(token))
    starts = [w for w in _STATEMENT_ORDER if f"`{w}`" in expected]
    line_start = text.rfind("\n", 0, start) + 1
    if token.type == "NAME" and starts and not text[line_start:start].strip(" \t{"):
        # A word where a statement begins: most likely a misspelled keyword (`studnt`).
        close = difflib.get_close_matches(str(token), starts, n=1, cutoff=0.6)
        listed = ", ".join(f"`{w}`" for w in starts)
        return error(
            "KD102",
            f"expected a statement, found {found}",
            source,
            span,
            "not a statement keyword",
            help=f"did you mean `{close[0]}`?" if close else f"a statement starts with {listed}",
        )
    good = _matching_example(exc, lark)
    hint = f"for example: `{good}`" if good else None
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
