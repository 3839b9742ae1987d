"""KD307/KD309: stages name real terms and roles; every term runs in some stage."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.ir import models as ir
from kdspec.ir.lower import did_you_mean
from kdspec.passes.context import PassContext


def check_stages(ctx: PassContext) -> list[Diagnostic]:
    """Stage references resolve; no term is left out of every stage."""
    m = ctx.method
    names = [t.name for t in m.terms]
    out: list[Diagnostic] = []
    active: set[str] = set()
    for stage in m.stages:
        key = ("stage", stage.name)
        for i, name in enumerate(stage.losses):
            if name not in names:
                out.append(
                    ctx.diag(
                        "KD307",
                        f"stage `{stage.name}` runs unknown term `{name}`",
                        (*key, "losses", i),
                        "no such term",
                        help=did_you_mean(name, names) or f"terms: {', '.join(names) or 'none'}",
                    )
                )
        active |= set(stage.losses or names)
        for bucket in ("train", "freeze"):
            for i, item in enumerate(getattr(stage, bucket)):
                if isinstance(item, ir.Str) and item.value not in names:
                    out.append(
                        ctx.diag(
                            "KD307",
                            f"stage `{stage.name}` cannot {bucket} `{item.value}`",
                            (*key, bucket, i),
                            "not a role, let or term",
                            help=did_you_mean(item.value, [*names, *(r.name for r in m.roles)]),
                        )
                    )
    if m.stages:
        for term in m.terms:
            if term.name not in active:
                out.append(
                    ctx.diag(
                        "KD309",
                        f"term `{term.name}` is active in no stage",
                        ("term", term.name),
                        "never runs",
                        severity=Severity.WARNING,
                        help=f"add `losses {term.name}` to a stage",
                    )
                )
    return out
