"""KD308: self-distillation must move knowledge between different taps, views or data."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.graph import types
from kdspec.passes.context import PassContext


def check_self(ctx: PassContext) -> list[Diagnostic]:
    """A role teaching itself from the very tap it learns at transfers nothing."""
    m = ctx.method
    out: list[Diagnostic] = []
    for term in m.terms:
        if term.kind != "transfer":
            continue
        src = {(t.role, t.view, types.tap_text(t)) for t, _ in types.taps(term.source, m)}
        dst = {(t.role, t.view, types.tap_text(t)) for t, _ in types.taps(term.target, m)}
        same = src & dst
        if same and src == dst and term.source == term.target:
            tap = sorted(same)[0][2]
            out.append(
                ctx.diag(
                    "KD308",
                    f"`{term.name}` teaches `{tap}` from itself",
                    ("term", term.name, "source"),
                    "same tap, view and data as the student side",
                    help="read the teacher side at another tap (a deeper exit), another view "
                    "(`s[other].logits`) or an earlier snapshot",
                )
            )
            continue
        self_roles = {r for r, _, _ in src} & {r for r, _, _ in dst}
        for r in sorted(self_roles & types.grad_roles(term.source, m)):
            out.append(
                ctx.diag(
                    "KD308",
                    f"`{r}` teaches itself in `{term.name}` without a stop-gradient",
                    ("term", term.name, "source"),
                    "gradient also flows into the teacher side",
                    severity=Severity.WARNING,
                    help=f"wrap the teacher side in `stopgrad(...)` so `{r}` learns only as "
                    "student",
                )
            )
    return out
