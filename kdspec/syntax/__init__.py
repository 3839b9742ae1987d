"""Text to syntax tree: the only package that imports lark."""

from __future__ import annotations

from pathlib import Path

from lark import Lark
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
    errors = _syntax_errors(source, lark)
    if errors:
        return None, errors
    comments.clear()
    try:
        tree = lark.parse(source.text)
        module = ToAst().transform(tree)
    except VisitError as exc:  # a transformer bug must still not be a traceback
        return None, [
            error("KD104", f"could not build the syntax tree: {exc.orig_exc}", source, Span(0, 0))
        ]
    found = tuple(ast.Comment(str(tok), _tok_span(tok)) for tok in comments)
    comments.clear()
    return ast.Module(module.imports, module.methods, found, module.span, module.functions), []


def _syntax_errors(source: SourceFile, lark: Lark) -> list[Diagnostic]:
    """Every syntax error of a file, one per broken statement (none if it parses).

    After an error the broken statement is blanked out and the file parsed again, so the next
    statement is checked from a clean parser state instead of reporting follow-on errors.
    """
    out: list[Diagnostic] = []
    text = source.text
    seen: set[int] = set()
    while len(out) < MAX_SYNTAX_ERRORS:
        try:
            lark.parse(text)
            break
        except UnexpectedInput as exc:
            offset = error_offset(exc)
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
    return out


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
