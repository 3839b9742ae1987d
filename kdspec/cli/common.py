"""Helpers shared by subcommands: output, diagnostics, parameter overrides."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from kdspec.diagnostics import Diagnostic, Severity, render_many


def use_color(stream: object = sys.stdout) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set."""
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def report(diagnostics: Iterable[Diagnostic], fmt: str = "full", summary: bool = True) -> int:
    """Print diagnostics to stderr (json to stdout); 1 if any is an error, else 0."""
    diags = list(diagnostics)
    stream = sys.stdout if fmt == "json" else sys.stderr
    if diags or fmt == "json":
        print(render_many(diags, fmt, color=use_color(stream), summary=summary), file=stream)
    return 1 if any(d.severity is Severity.ERROR for d in diags) else 0


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """``["T=2", "alpha=0.5"]`` -> ``{"T": "2", "alpha": "0.5"}`` (lowering parses values)."""
    out: dict[str, object] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--param expects name=value, got `{item}`")
        out[name.strip()] = value.strip()
    return out


class UsageError(Exception):
    """A bad command line: reported in one line, exit code 2."""
