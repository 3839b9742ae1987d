"""Semantic passes: pure functions ``check_x(ctx) -> list[Diagnostic]``, all run, all reported.

The claims check (KD311) needs the taxonomy, a layer above this one: it lives in
:mod:`kdspec.taxonomy.claims`, and :func:`kdspec.api.check_source` passes it as an ``extra``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from kdspec._resources import library_dir
from kdspec.diagnostics import Diagnostic, error
from kdspec.graph import build_graph
from kdspec.ir import Lowered, lower_module
from kdspec.ir import models as ir
from kdspec.ir.evaluate import MAX_DEPTH
from kdspec.ir.traverse import depth
from kdspec.passes.check_axes import check_axes
from kdspec.passes.check_cycles import check_cycles
from kdspec.passes.check_ranges import check_ranges
from kdspec.passes.check_roles import check_applied, check_roles
from kdspec.passes.check_self import check_self
from kdspec.passes.check_signal import check_signal
from kdspec.passes.check_stages import check_stages
from kdspec.passes.check_types import check_types
from kdspec.passes.check_unused import check_unused
from kdspec.passes.check_values import check_values
from kdspec.passes.context import PassContext
from kdspec.source import SourceFile
from kdspec.syntax import try_parse

Check = Callable[[PassContext], list[Diagnostic]]

PASSES: tuple[Check, ...] = (
    check_values,
    check_types,
    check_axes,
    check_ranges,
    check_roles,
    check_applied,
    check_signal,
    check_cycles,
    check_self,
    check_stages,
    check_unused,
)


def run_passes(lowered: Lowered, extra: Sequence[Check] = ()) -> list[Diagnostic]:
    """Every pass (then every ``extra`` check) over one lowered method, all diagnostics kept."""
    ctx = PassContext(lowered.method, build_graph(lowered.method), lowered.source_map)
    out: list[Diagnostic] = []
    for check in (*PASSES, *extra):
        out.extend(check(ctx))
    return out


def check_source(
    source: SourceFile,
    overrides: dict[str, object] | None = None,
    library: Path | None = None,
    extra: Sequence[Check] = (),
) -> tuple[list[Lowered], list[Diagnostic]]:
    """Parse, lower and run every pass over one file (see :func:`kdspec.api.check_source`).

    Returns:
        The lowered methods (empty on syntax errors) and all diagnostics, sorted, each once.
    """
    module, diags = try_parse(source)
    if module is None:
        return [], diags
    if not module.methods and not module.functions:  # a file of defs is a function library
        return [], [error("KD210", "the file defines no method", source)]
    # Each expression is at most MAX_NESTING deep, but `use` inlines one method's parameters
    # into another's: a chain of uses can compose them past what later stages evaluate.
    too_deep = error(
        "KD106",
        "expressions nest too deeply once `use` inlines methods into each other",
        source,
        module.span,
        help="pass plain values to used methods, or split expressions with `let`",
    )
    try:
        lowered, diags = lower_module(module, source, overrides, library or library_dir())
        if any(_deepest(low.method) > MAX_DEPTH for low in lowered):
            return [], [too_deep]
        for low in lowered:
            diags.extend(run_passes(low, extra))
    except RecursionError:
        return [], [too_deep]
    unique = {(d.code, d.message, d.span): d for d in diags}
    return list(lowered), sorted(unique.values(), key=lambda d: d.sort_key())


def _deepest(method: ir.Method) -> int:
    """The depth of the method's deepest expression (counted without recursion)."""
    return max((depth(e) for e in method.expressions() if e is not None), default=0)


__all__ = ["PASSES", "Check", "PassContext", "check_source", "run_passes"]
