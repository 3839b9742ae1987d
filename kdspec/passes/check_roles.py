"""KD306/KD312/KD319: gradient only into roles that can learn; roles on sides that make sense;
a role's module applied to another role's value (``t.classifier(x)``) is not trained by it."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.ir.printer import module_text
from kdspec.passes.context import PassContext


def check_applied(ctx: PassContext) -> list[Diagnostic]:
    """KD312: a virtual role has no modules to apply. KD319: a term would train a module it
    applies to another role's value (the student's loss training the teacher's classifier)."""
    m = ctx.method
    out: list[Diagnostic] = []
    paths: list[tuple[tuple[object, ...], ir.Expr | None]] = [
        (("predict", r, "value"), v) for r, v in m.predictions.items()
    ]
    for term in m.terms:
        paths += [(("term", term.name, side), getattr(term, side)) for side in ("source", "target")]
    for who, value in m.predictions.items():
        if m.role(who) is not None and who not in types.roles_read(value, m):
            out.append(
                ctx.diag(
                    "KD320",
                    f"`predict {who}` reads nothing of `{who}`: the run would report another "
                    f"role's predictions as `{who}`'s",
                    ("predict", who, "value"),
                    f"no tap of `{who}` here",
                    help=f"predict from `{who}`'s own values, e.g. "
                    f"`predict {who} = t.classifier(linear({who}.embedding))`",
                )
            )
    for path, e in paths:
        for a in ir.find_all(e, ir.Apply, m):
            role = m.role(a.role)
            if role is not None and role.mode == "virtual":
                out.append(
                    ctx.diag(
                        "KD312",
                        f"virtual teacher `{a.role}` has no network, so no module to apply",
                        path,
                        "applied here",
                        related=((("role", a.role), "declared virtual here"),),
                    )
                )
    for stage in m.effective_stages():
        trained = ctx.graph.trained_roles(stage)
        for term in ctx.graph.active_terms(stage):
            learners = types.grad_roles(term.target, m) | types.grad_roles(term.source, m)
            for side in ("source", "target"):
                for a in types.applications(getattr(term, side), m):
                    if a.role not in trained or a.role in learners:
                        continue
                    where = f"stage `{stage.name}`" if m.stages else "the method"
                    declared = m.role(a.role)
                    related = (
                        (("role", a.role), "declared trained here")
                        if declared is not None and declared.mode == "trained"
                        else (("stage", stage.name), f"trains `{a.role}`")
                    )
                    out.append(
                        ctx.diag(
                            "KD319",
                            f"`{term.name}` applies `{module_text(a)}` to another role's value, "
                            f"and {where} trains `{a.role}`: its loss would train "
                            f"`{module_text(a)}` too",
                            ("term", term.name, side),
                            "gradient reaches the module here",
                            related=(related,),
                            help=f"keep `{a.role}` frozen where `{term.name}` is active: "
                            f"`freeze {a.role}` in the stage, or declare it frozen",
                        )
                    )
    return out


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
