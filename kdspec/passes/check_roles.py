"""KD306/KD312: gradient only into roles that can learn; roles on sides that make sense."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.passes.context import PassContext


def check_roles(ctx: PassContext) -> list[Diagnostic]:
    """A frozen, moving-average or virtual role never learns from a term."""
    m = ctx.method
    kg = ctx.graph
    out: list[Diagnostic] = []
    for stage in m.effective_stages():
        trained = kg.trained_roles(stage)
        explicit = {t.role for t in stage.train if hasattr(t, "role")}
        for term in kg.active_terms(stage):
            for r in sorted(types.grad_roles(term.target, m)):
                role = m.role(r)
                if role is None:
                    continue
                if role.mode == "virtual":
                    out.append(
                        ctx.diag(
                            "KD312",
                            f"virtual teacher `{r}` cannot learn",
                            ("term", term.name, "target"),
                            "on the student side",
                            related=((("role", r), "declared virtual here"),),
                        )
                    )
                elif role.mode in ("ema", "snapshot") or (
                    role.mode == "frozen" and r not in trained and r not in explicit
                ):
                    where = f" in stage `{stage.name}`" if m.stages else ""
                    out.append(
                        ctx.diag(
                            "KD306",
                            f"{role.kind} `{r}` is {role.mode}{where} but `{term.name}` "
                            "sends gradient into it",
                            ("term", term.name, "target"),
                            "gradient flows into this side",
                            related=((("role", r), f"declared {role.mode} here"),),
                            help=f"swap `from` and `to`, wrap the side in `stopgrad(...)`, or "
                            f"`train {r}` in a stage",
                        )
                    )
    return out
