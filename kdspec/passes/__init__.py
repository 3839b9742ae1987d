"""Semantic passes: pure functions ``check_x(ctx) -> list[Diagnostic]``, all run, all reported."""

from __future__ import annotations

from collections.abc import Callable

from kdspec.diagnostics import Diagnostic
from kdspec.graph import build_graph
from kdspec.ir import Lowered
from kdspec.passes.check_axes import check_axes
from kdspec.passes.check_claims import check_claims
from kdspec.passes.check_cycles import check_cycles
from kdspec.passes.check_ranges import check_ranges
from kdspec.passes.check_roles import check_roles
from kdspec.passes.check_self import check_self
from kdspec.passes.check_signal import check_signal
from kdspec.passes.check_stages import check_stages
from kdspec.passes.check_types import check_types
from kdspec.passes.check_unused import check_unused
from kdspec.passes.check_values import check_values
from kdspec.passes.context import PassContext

PASSES: tuple[Callable[[PassContext], list[Diagnostic]], ...] = (
    check_values,
    check_types,
    check_axes,
    check_ranges,
    check_roles,
    check_signal,
    check_cycles,
    check_self,
    check_stages,
    check_unused,
    check_claims,
)


def run_passes(lowered: Lowered) -> list[Diagnostic]:
    """Every pass over one lowered method; a crashing pass never hides the others' results."""
    ctx = PassContext(lowered.method, build_graph(lowered.method), lowered.source_map)
    out: list[Diagnostic] = []
    for check in PASSES:
        out.extend(check(ctx))
    return out


__all__ = ["PASSES", "PassContext", "run_passes"]
