"""KD303: every role that is trained gets gradient from some term."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.passes.context import PassContext


def check_signal(ctx: PassContext) -> list[Diagnostic]:
    """A student (or peer, assistant, trained teacher) with no loss to learn from."""
    m = ctx.method
    out: list[Diagnostic] = []
    if not m.terms:
        student = next((r.name for r in m.roles if r.mode == "trained"), None)
        return [
            ctx.diag(
                "KD303",
                f"method `{m.name}` has no loss term: there is nothing to train",
                ("method", "name"),
                "no `transfer` or `supervise` in this method",
                help=f"add `supervise {student}.logits with cross_entropy` or a `transfer`"
                if student
                else "declare `teacher t` and `student s`, then "
                "`transfer softmax(T=4) from t.logits to s.logits with kl`",
            )
        ]
    learners: set[str] = set()
    for term in m.terms:
        learners |= types.grad_roles(term.target, m)
    for role in m.roles:
        if role.mode != "trained" or role.name in learners:
            continue
        out.append(
            ctx.diag(
                "KD303",
                f"{role.kind} `{role.name}` is trained but no loss term teaches it",
                ("role", role.name),
                "receives no gradient",
                help=f"add `supervise {role.name}.logits with cross_entropy` or a transfer "
                f"`to {role.name}...`",
            )
        )
    for stage in m.stages:
        active = ctx.graph.active_terms(stage)
        reached = {r for t in active for r in types.grad_roles(t.target, m)}
        # a role whose module a term applies is reached (KD319 says whether it should be)
        reached |= {a.role for t in active for a in types.applications(t.target, m)}
        for item in stage.train:
            if isinstance(item, ir.Tap) and item.role not in reached:
                out.append(
                    ctx.diag(
                        "KD303",
                        f"stage `{stage.name}` trains `{item.role}` but none of its "
                        "losses reaches it",
                        ("stage", stage.name),
                        "in this stage",
                    )
                )
    return out
