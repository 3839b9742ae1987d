"""KD304: definitions nobody uses (warnings)."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.passes.context import PassContext
from kdspec.vocabulary.functions import GENERATED_VIEWS


def _names(e: ir.Expr) -> tuple[str, ...]:
    """The names one node refers to (a bare word may name a term, view or subset)."""
    if isinstance(e, ir.ParamRef | ir.LetRef):
        return (e.name,)
    if isinstance(e, ir.Tap):
        return (e.role, e.view) if e.view else (e.role,)
    if isinstance(e, ir.Apply):
        return (e.role,)
    if isinstance(e, ir.Str):
        return (e.value,)
    return ()


def check_unused(ctx: PassContext) -> list[Diagnostic]:
    """Unused parameters, roles, views, subsets and let bindings."""
    m = ctx.method
    used = {name for e in m.expressions() for node in e.walk() for name in _names(node)}
    used |= {term.subset for term in m.terms if term.subset}
    used |= set(m.folded_params)
    for stage in m.stages:
        for a, b in stage.handoffs:
            used |= {a, b}
    for role in m.roles:
        if role.source:
            used.add(role.source)
        if role.view:
            used.add(role.view)
    for part in m.data:  # a generated view runs its generator's model
        kind = GENERATED_VIEWS.get(part.func or "")
        used |= {r.name for r in m.roles if r.kind == kind}
    for ens in m.ensembles:
        if ens.name in used:
            used |= set(ens.members)
    out: list[Diagnostic] = []

    def warn(kind: str, name: str, key: tuple[object, ...]) -> None:
        out.append(
            ctx.diag(
                "KD304",
                f"{kind} `{name}` is never used",
                key,
                "defined here",
                severity=Severity.WARNING,
            )
        )

    for name in m.params:
        if name not in used:
            warn("parameter", name, ("param", name))
    for role in m.roles:
        if role.name not in used and not any(
            role.name in types.expand_role(e.name, m) for e in m.ensembles if e.name in used
        ):
            warn(role.kind, role.name, ("role", role.name))
    for part in m.data:
        if part.name not in used:
            warn(part.kind, part.name, ("data", part.name))
    for let in m.lets:
        if let.name not in used:
            warn("let binding", let.name, ("let", let.name))
    return out
