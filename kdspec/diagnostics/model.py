"""The diagnostic data model, kept apart from its rendering (as ruff and miette do)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kdspec.source import SourceFile, Span


class Severity(enum.StrEnum):
    """How bad a diagnostic is; only errors make a command fail."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Label:
    """A span with a short phrase; primary labels get ``^`` carets, secondary ones ``-``."""

    span: Span
    message: str = ""
    primary: bool = True
    source: SourceFile | None = None  # None: the diagnostic's own file


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec (or a run, or a model), with where it is and how to fix it.

    Attributes:
        code: the registry code, e.g. ``KD301`` (see :mod:`kdspec.diagnostics.codes`).
        message: lower case, no trailing period, source fragments in backticks.
        source: the file the primary span points into (None for file-less problems).
        labels: primary label first; more labels may point elsewhere in the file.
        notes: context lines rendered as ``= note: ...``.
        help: a suggested fix, rendered as ``help: ...``.
    """

    code: str
    severity: Severity
    message: str
    source: SourceFile | None = None
    labels: tuple[Label, ...] = ()
    notes: tuple[str, ...] = ()
    help: str | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def span(self) -> Span | None:
        """The primary span, if the diagnostic has one."""
        for label in self.labels:
            if label.primary:
                return label.span
        return None

    def sort_key(self) -> tuple[str, int, int, str]:
        """Diagnostics are reported ordered by file, then position, then code."""
        span = self.span
        return (
            self.source.name if self.source else "",
            span.start if span else -1,
            span.end if span else -1,
            self.code,
        )


class KdError(Exception):
    """Raised by the Python API when a spec has errors; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        first = diagnostics[0] if diagnostics else None
        super().__init__(f"{first.code}: {first.message}" if first else "kdspec error")

    def __str__(self) -> str:
        from kdspec.diagnostics.render import render_many

        return render_many(self.diagnostics, fmt="full", color=False)


def _make(
    severity: Severity,
    code: str,
    message: str,
    source: SourceFile | None,
    span: Span | None,
    label: str,
    *,
    notes: tuple[str, ...] | list[str] = (),
    help: str | None = None,
    related: tuple[Label, ...] | list[Label] = (),
) -> Diagnostic:
    labels = (Label(span, label),) if span is not None else ()
    return Diagnostic(
        code=code,
        severity=severity,
        message=message,
        source=source,
        labels=labels + tuple(related),
        notes=tuple(notes),
        help=help,
    )


def error(
    code: str,
    message: str,
    source: SourceFile | None = None,
    span: Span | None = None,
    label: str = "",
    **kwargs: object,
) -> Diagnostic:
    """Build an error diagnostic with one primary label (see :func:`_make` for keywords)."""
    return _make(Severity.ERROR, code, message, source, span, label, **kwargs)  # type: ignore[arg-type]


def warning(
    code: str,
    message: str,
    source: SourceFile | None = None,
    span: Span | None = None,
    label: str = "",
    **kwargs: object,
) -> Diagnostic:
    """Build a warning diagnostic with one primary label."""
    return _make(Severity.WARNING, code, message, source, span, label, **kwargs)  # type: ignore[arg-type]
