"""Text to syntax tree: the only package that imports lark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lark import Lark, Tree
from lark.exceptions import UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from kdspec.diagnostics import Diagnostic, KdError, error
from kdspec.source import SourceFile, Span
from kdspec.syntax import ast
from kdspec.syntax.errors import MAX_SYNTAX_ERRORS, error_offset, skip_statement, syntax_diagnostic
from kdspec.syntax.grammar import grammar_text, parser
from kdspec.syntax.transform import ToAst, _tok_span

__all__ = ["ast", "grammar_text", "parse_file", "parse_source", "parse_text", "try_parse"]


def try_parse(source: SourceFile) -> tuple[ast.Module | None, list[Diagnostic]]:
    """Parse a source file; return the tree, or None and the syntax diagnostics."""
    lark, comments = parser()
    comments.clear()
    tree, errors = _parse_or_errors(source, lark)
    if tree is None:
        comments.clear()
        return None, errors
    too_deep = _too_deep(tree, source)
    if too_deep is not None:
        return None, [too_deep]
    try:
        module = ToAst().transform(tree)
    except VisitError as exc:  # a transformer bug must still not be a traceback
        return None, [
            error("KD104", f"could not build the syntax tree: {exc.orig_exc}", source, Span(0, 0))
        ]
    found = tuple(ast.Comment(str(tok), _tok_span(tok)) for tok in comments)
    comments.clear()
    return ast.Module(module.imports, module.methods, found, module.span, module.functions), []


RECOVERY_BUDGET = 60_000
"""Characters re-parsed while recovering from syntax errors: each error costs a parse of the
file up to that error, so a large broken file reports fewer errors instead of taking seconds.
A character can be a token (`- - - 1`, `[[[1]]]`): about 15 us each on a loaded machine, so
the budget is under a CPU second (the fuzz found 16 KB files whose 12 errors took 2.8 s)."""


def _parse_or_errors(source: SourceFile, lark: Lark) -> tuple[Tree[Any] | None, list[Diagnostic]]:
    """The parse tree of a file that parses (parsed once), or every syntax error of one that
    does not, one per broken statement.

    After an error the broken statement is blanked out and the file parsed again, so the next
    statement is checked from a clean parser state instead of reporting follow-on errors.
    """
    out: list[Diagnostic] = []
    text = source.text
    seen: set[int] = set()
    reparsed = 0
    while len(out) < MAX_SYNTAX_ERRORS and reparsed <= RECOVERY_BUDGET:
        try:
            tree = lark.parse(text)
            if not out:
                return tree, []
            break
        except UnexpectedInput as exc:
            offset = error_offset(exc)
            reparsed += offset  # lark lexes and parses up to the error, no further
            if offset in seen:
                break
            seen.add(offset)
            out.append(syntax_diagnostic(exc, source, lark))
            at_end = isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
            if isinstance(exc, UnexpectedEOF) or at_end:
                break
            skipped = skip_statement(text, offset)
            if skipped is None:
                break
            text = skipped
    return None, out


MAX_NESTING = 100
"""Deepest syntax tree accepted (`- - 1` is 2 levels, a call in a call 4): every later stage
(transformer, lowering, evaluator, printers, `fmt`) recurses over the tree, so the limit keeps
them all far below Python's recursion limit."""


def _too_deep(tree: Tree[Any], source: SourceFile) -> Diagnostic | None:
    """KD106 at the first node nested deeper than MAX_NESTING (walked without recursion)."""
    stack: list[tuple[Tree[Any], int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            start = getattr(meta, "start_pos", 0) if not meta.empty else 0
            end = getattr(meta, "end_pos", start) if not meta.empty else start
            return error(
                "KD106",
                f"expression nested more than {MAX_NESTING} levels deep",
                source,
                Span(start, min(end, start + 1)),
                "too deep here",
                help="split it with `let` or `param` definitions",
            )
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))
    return None


def parse_source(source: SourceFile) -> ast.Module:
    """Parse or raise :class:`KdError` with the syntax diagnostics."""
    module, diagnostics = try_parse(source)
    if module is None:
        raise KdError(diagnostics)
    return module


def parse_text(text: str, name: str = "<string>") -> ast.Module:
    """Parse spec text (see :func:`parse_source`).

    Example:
        >>> m = parse_text('method kd { teacher t  student s }')
        >>> m.methods[0].name.name
        'kd'
    """
    return parse_source(SourceFile(name, text))


def parse_file(path: str | Path) -> ast.Module:
    """Parse a `.kd` file (see :func:`parse_source`)."""
    return parse_source(SourceFile.read(path))
