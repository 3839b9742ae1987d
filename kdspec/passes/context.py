"""What every pass receives: the method, its graph, and where things are in the source."""

from __future__ import annotations

from dataclasses import dataclass

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.graph import KdGraph
from kdspec.ir import SourceMap
from kdspec.ir import models as ir


@dataclass(frozen=True)
class PassContext:
    """Read-only input of a pass."""

    method: ir.Method
    graph: KdGraph
    smap: SourceMap

    def diag(
        self,
        code: str,
        message: str,
        path: tuple[object, ...],
        label: str = "",
        *,
        severity: Severity = Severity.ERROR,
        notes: tuple[str, ...] = (),
        help: str | None = None,
        related: tuple[tuple[tuple[object, ...], str], ...] = (),
    ) -> Diagnostic:
        """A diagnostic pointing at the source of an IR path (and related paths)."""
        return self.smap.diagnostic(
            code, message, path, label, severity=severity, notes=notes, help=help, related=related
        )
