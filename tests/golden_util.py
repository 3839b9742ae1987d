"""Helpers for the golden-file tests: a readable AST dump and the compare-or-update step."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

import pytest

from kdspec.source import SourceFile, Span
from kdspec.syntax import ast

# Nodes shown on one line: `Ident kd @1:8-1:10`.
_LEAVES = {
    ast.Ident: lambda n: n.name,
    ast.Name: lambda n: n.id,
    ast.Number: lambda n: f"{n.value!r} {json.dumps(n.text)}",
    ast.String: lambda n: json.dumps(n.value),
    ast.Comment: lambda n: json.dumps(n.text),
}


def span_text(span: Span, source: SourceFile) -> str:
    """``@L:C-L:C``: 1-based line and column of the start and of the (exclusive) end."""
    line, col = source.line_col(span.start)
    end_line, end_col = source.line_col(span.end)
    return f"@{line}:{col}-{end_line}:{end_col}"


def dump_ast(node: Any, source: SourceFile) -> str:
    """An indented dump of a syntax tree, one field per line, spans as ``@L:C-L:C``.

    Example:
        >>> from kdspec.syntax import parse_source
        >>> src = SourceFile("x.kd", "method m { param T = 4 }")
        >>> print(dump_ast(parse_source(src).methods[0].body[0], src), end="")
        Param @1:12-1:23
          name: Ident T @1:18-1:19
          value: Number 4 "4" @1:22-1:23
    """
    lines: list[str] = []
    _dump(node, source, "", "", lines)
    return "\n".join(lines) + "\n"


def _dump(node: Any, source: SourceFile, indent: str, prefix: str, lines: list[str]) -> None:
    leaf = _LEAVES.get(type(node))
    if leaf is not None:
        lines.append(
            f"{indent}{prefix}{type(node).__name__} {leaf(node)} {span_text(node.span, source)}"
        )
        return
    if not dataclasses.is_dataclass(node):
        lines.append(
            f"{indent}{prefix}{node!r}" if not isinstance(node, str) else f"{indent}{prefix}{node}"
        )
        return
    lines.append(f"{indent}{prefix}{type(node).__name__} {span_text(node.span, source)}")
    inner = indent + "  "
    for f in dataclasses.fields(node):
        if f.name == "span":
            continue
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            if not value:
                lines.append(f"{inner}{f.name}: []")
                continue
            lines.append(f"{inner}{f.name}:")
            for i, item in enumerate(value):
                _dump(item, source, inner + "  ", f"[{i}] ", lines)
        else:
            _dump(value, source, inner, f"{f.name}: ", lines)


def assert_golden(path: Path, actual: str, update: bool) -> None:
    """Compare ``actual`` with the file at ``path``; with ``--update-golden``, rewrite it."""
    if update:
        if not path.exists() or path.read_text(encoding="utf-8") != actual:
            path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"{path.name} is missing; run `pytest --update-golden` and review the diff")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"{path.name} (expected)",
                tofile=f"{path.name} (actual)",
            )
        )
        pytest.fail(
            f"{path.name} differs (update with `pytest --update-golden`):\n{diff}", pytrace=False
        )
