"""Render diagnostics as text: ``full`` (rustc/ruff style), ``concise`` and ``json``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from kdspec.diagnostics.model import Diagnostic, Label, Severity
from kdspec.source import SourceFile

TAB_WIDTH = 4
_COLORS = {"error": "\x1b[1;31m", "warning": "\x1b[1;33m", "bold": "\x1b[1m", "blue": "\x1b[1;34m"}
_RESET = "\x1b[0m"


def _paint(text: str, style: str, color: bool) -> str:
    return f"{_COLORS[style]}{text}{_RESET}" if color else text


def _location(diag: Diagnostic) -> tuple[str, int, int, int, int] | None:
    span = diag.span
    if diag.source is None:
        return None
    if span is None:
        return diag.source.name, 0, 0, 0, 0
    line, col = diag.source.line_col(span.start)
    end_line, end_col = diag.source.line_col(span.end)
    return diag.source.name, line, col, end_line, end_col


def _expand(text: str) -> str:
    return text.expandtabs(TAB_WIDTH)


def _display_col(line_text: str, col: int) -> int:
    """Column (1-based) after tab expansion."""
    return len(_expand(line_text[: col - 1])) + 1


def _label_rows(source: SourceFile, labels: list[Label]) -> dict[int, list[tuple[int, int, Label]]]:
    """Labels grouped by their 1-based start line, each with display columns [start, end)."""
    rows: dict[int, list[tuple[int, int, Label]]] = {}
    for label in labels:
        line, col = source.line_col(label.span.start)
        end_line, end_col = source.line_col(label.span.end)
        text = source.line_text(line)
        start = _display_col(text, col)
        end = _display_col(text, end_col) if end_line == line else len(_expand(text)) + 1
        rows.setdefault(line, []).append((start, max(end, start + 1), label))
    return rows


def _render_full(diag: Diagnostic, color: bool) -> str:
    sev = diag.severity.value
    out = [_paint(f"{sev}[{diag.code}]", sev, color) + _paint(f": {diag.message}", "bold", color)]
    loc = _location(diag)
    labels = [lb for lb in diag.labels if lb.source in (None, diag.source)]
    if loc is not None and diag.source is not None and labels:
        source = diag.source
        rows = _label_rows(source, labels)
        shown = sorted(rows)
        width = len(str(shown[-1]))
        pad = " " * width
        bar = _paint("|", "blue", color)
        out.append(f"{pad}{_paint('-->', 'blue', color)} {loc[0]}:{loc[1]}:{loc[2]}")
        out.append(f"{pad} {bar}")
        previous = None
        for line in shown:
            if previous is not None and line - previous == 2:
                gap = _expand(source.line_text(line - 1))
                out.append(f"{line - 1:>{width}} {bar} {gap}".rstrip())
            elif previous is not None and line - previous > 2:
                out.append(_paint("...", "blue", color))
            text = _expand(source.line_text(line))
            out.append(f"{line:>{width}} {bar} {text}".rstrip())
            for start, end, label in sorted(rows[line], key=lambda r: (r[0], r[1])):
                mark = ("^" if label.primary else "-") * (end - start)
                style = sev if label.primary else "blue"
                caret = " " * (start - 1) + _paint(mark, style, color)
                message = f" {label.message}" if label.message else ""
                out.append(f"{pad} {bar} {caret}{message}".rstrip())
            previous = line
        if diag.notes or diag.help:
            out.append(f"{pad} {bar}")
        for note in diag.notes:
            out.append(f"{pad} = note: {note}")
    elif loc is not None:
        out.append(f" --> {loc[0]}")
        out.extend(f"  = note: {note}" for note in diag.notes)
    else:
        out.extend(f"  = note: {note}" for note in diag.notes)
    if diag.help:
        out.append(_paint("help", "bold", color) + f": {diag.help}")
    return "\n".join(out)


def _render_concise(diag: Diagnostic) -> str:
    loc = _location(diag)
    where = f"{loc[0]}:{loc[1]}:{loc[2]}: " if loc and loc[1] else (f"{loc[0]}: " if loc else "")
    return f"{where}{diag.severity.value}[{diag.code}] {diag.message}"


def to_json(diag: Diagnostic) -> dict[str, object]:
    """A diagnostic as a JSON-ready dict (the ``--format json`` record)."""
    loc = _location(diag)
    span = diag.span
    labels = []
    for label in diag.labels:
        src = label.source or diag.source
        line, col = src.line_col(label.span.start) if src else (0, 0)
        labels.append(
            {
                "message": label.message,
                "primary": label.primary,
                "start": label.span.start,
                "end": label.span.end,
                "line": line,
                "col": col,
            }
        )
    return {
        "code": diag.code,
        "severity": diag.severity.value,
        "message": diag.message,
        "file": loc[0] if loc else None,
        "start": span.start if span else None,
        "end": span.end if span else None,
        "line": loc[1] if loc and span else None,
        "col": loc[2] if loc and span else None,
        "end_line": loc[3] if loc and span else None,
        "end_col": loc[4] if loc and span else None,
        "labels": labels,
        "notes": list(diag.notes),
        "help": diag.help,
    }


def render(diag: Diagnostic, fmt: str = "full", color: bool = False) -> str:
    """Render one diagnostic in ``full`` or ``concise`` form (``json`` gives one object)."""
    if fmt == "concise":
        return _render_concise(diag)
    if fmt == "json":
        return json.dumps(to_json(diag), indent=2)
    return _render_full(diag, color)


def summary_line(diagnostics: Iterable[Diagnostic]) -> str:
    """``found 2 errors, 1 warning`` (or ``no problems found``)."""
    diags = list(diagnostics)
    errors = sum(d.severity is Severity.ERROR for d in diags)
    warnings = len(diags) - errors
    if not diags:
        return "no problems found"
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return "found " + ", ".join(parts)


def render_many(
    diagnostics: Iterable[Diagnostic], fmt: str = "full", color: bool = False, summary: bool = True
) -> str:
    """Render a batch of diagnostics, sorted, with a closing summary line for text formats."""
    diags = sorted(diagnostics, key=lambda d: d.sort_key())
    if fmt == "json":
        return json.dumps([to_json(d) for d in diags], indent=2)
    sep = "\n\n" if fmt == "full" else "\n"
    body = sep.join(render(d, fmt, color) for d in diags)
    if summary:
        body = f"{body}{sep if body else ''}{summary_line(diags)}"
    return body
