"""KD304: definitions nobody uses (warnings)."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.passes.context import PassContext


def _refs(e: object, out: set[str]) -> None:
    if isinstance(e, ir.ParamRef | ir.LetRef):
        out.add(e.name)
    elif isinstance(e, ir.Tap):
        out.add(e.role)
        if e.view:
            out.add(e.view)
    elif isinstance(e, ir.Str):
        out.add(e.value)
    elif isinstance(e, ir.Call):
        for a in (*e.args, *e.kwargs.values()):
            _refs(a, out)
    elif isinstance(e, ir.BinOp):
        _refs(e.left, out)
        _refs(e.right, out)
    elif isinstance(e, ir.Neg):
        _refs(e.operand, out)
    elif isinstance(e, ir.ListE):
        for i in e.items:
            _refs(i, out)


def check_unused(ctx: PassContext) -> list[Diagnostic]:
    """Unused parameters, roles, views, subsets and let bindings."""
    m = ctx.method
    used: set[str] = set()
    for term in m.terms:
        for e in (term.source, term.target, term.weight, term.loss, *term.knowledge):
            _refs(e, used)
        if term.subset:
            used.add(term.subset)
    for let in m.lets:
        _refs(let.value, used)
    for p in m.params.values():
        _refs(p, used)
    used |= set(m.folded_params)
    for stage in m.stages:
        for e in (*stage.train, *stage.freeze, stage.duration, stage.repeat):
            _refs(e, used)
        for a, b in stage.handoffs:
            used |= {a, b}
    for part in m.data:
        for e in (*part.args, *part.kwargs.values()):
            _refs(e, used)
    for ens in m.ensembles:
        _refs(ens.weights, used)
    for role in m.roles:
        for e in role.options.values():
            _refs(e, used)
        if role.source:
            used.add(role.source)
        if role.view:
            used.add(role.view)
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
