"""The method in plain English, read from the graph: who, what, where, how, when."""

from __future__ import annotations

from kdspec.graph import types
from kdspec.graph.build import KdGraph
from kdspec.ir import models as ir
from kdspec.ir.evaluate import EvalError, evaluate
from kdspec.ir.printer import expr_text
from kdspec.vocabulary import FUNCTIONS

_MODE = {
    "frozen": "frozen (pre-trained, not updated)",
    "trained": "trained",
    "ema": "an exponential moving average of `{source}`",
    "snapshot": "a frozen snapshot of `{source}`",
    "virtual": "virtual (a hand-designed distribution, no network)",
}


def _value(e: ir.Expr, params: dict[str, ir.Expr]) -> str:
    text = expr_text(e)
    try:
        v = evaluate(e, params)
    except EvalError:
        return text
    shown = f"{v:g}" if isinstance(v, float) else str(v)
    has_schedule = isinstance(e, ir.Call) or "(" in text
    if has_schedule:
        return f"{text} (at most {shown})"
    return text if text == shown else f"{text} = {shown}"


def _knowledge(term: ir.Term, side: str, kg: KdGraph) -> str:
    kind = types.side_kind(term, side, kg.method)
    return kind.replace("_", " ")


def explain(kg: KdGraph) -> str:
    """A deterministic multi-line description of a method."""
    m = kg.method
    lines = [f"Method `{m.name}`" + (f': "{m.title}"' if m.title else "")]
    lines += [f"  cites {c}" for c in m.cites]
    if m.uses:
        lines.append("  composed from: " + ", ".join(f"`{u}`" for u in m.uses))
    if m.params:
        lines.append(
            "  parameters: " + ", ".join(f"{k} = {expr_text(v)}" for k, v in m.params.items())
        )
    lines.append("")
    lines.append("Who:")
    for role in m.roles:
        mode = _MODE[role.mode].format(source=role.source)
        extra = f", sees view `{role.view}`" if role.view else ""
        lines.append(f"  - {role.kind} `{role.name}`: {mode}{extra}")
    for ens in m.ensembles:
        how = "weighted mean" if ens.weights else "mean"
        weights = f", weights {_value(ens.weights, m.params)}" if ens.weights else ""
        lines.append(
            f"  - ensemble `{ens.name}`: {how} of "
            + ", ".join(f"`{x}`" for x in ens.members)
            + weights
        )
    for part in m.data:
        how = f" = {part.func}" if part.func else " (bound by the run)"
        lines.append(f"  - {part.kind} `{part.name}`{how}")
    lines.append("")
    lines.append("What, where and how:")
    for term in m.terms:
        loss = FUNCTIONS.get(term.loss.func)
        loss_text = expr_text(term.loss)
        weight = _value(term.weight, m.params)
        subset = f", on subset `{term.subset}`" if term.subset else ""
        origin = f" (from `use {term.origin}`)" if term.origin else ""
        if term.kind == "supervise":
            lines.append(
                f"  - `{term.name}`{origin}: labels supervise `{expr_text(term.target)}`"
                f" with {loss_text}, weight {weight}{subset}"
            )
            continue
        teachers = sorted(types.roles_read(term.source, m)) or ["the labels"]
        learners = sorted(types.grad_roles(term.target, m))
        know = " | ".join(expr_text(k) for k in term.knowledge) or "as is"
        lines.append(
            f"  - `{term.name}`{origin}: {', '.join(teachers)} teaches "
            f"{', '.join(learners) or 'nobody'}"
        )
        lines.append(f"      from  {expr_text(term.source)}")
        lines.append(f"      to    {expr_text(term.target)}")
        lines.append(
            f"      knowledge {know} -> {_knowledge(term, 'target', kg)}"
            + (f", layers paired by `{term.mapping}`" if term.mapping else "")
        )
        adapters = types.uses_adapter(term.target, m) + types.uses_adapter(term.source, m)
        if adapters:
            lines.append("      adapters " + ", ".join(adapters) + " (sized from shapes)")
        stop = [
            r for r in types.roles_read(term.source, m) if r not in types.grad_roles(term.source, m)
        ]
        if stop:
            lines.append("      stop-gradient on " + ", ".join(sorted(stop)))
        family = f" ({loss.family})" if loss and loss.family else ""
        lines.append(f"      matched by {loss_text}{family}, weight {weight}{subset}")
    lines.append("")
    lines.append("When:")
    stages = m.effective_stages()
    for stage in stages:
        dur = ""
        if stage.duration is not None:
            unit = {"fraction": "of training", "epochs": "epochs", "steps": "steps"}[
                stage.unit or "epochs"
            ]
            value = _value(stage.duration, m.params)
            dur = f" for {value} {unit}"
        if stage.repeat is not None:
            dur += f", repeated {_value(stage.repeat, m.params)} times"
        active = ", ".join(f"`{t.name}`" for t in kg.active_terms(stage)) or "nothing"
        trained = ", ".join(f"`{r}`" for r in sorted(kg.trained_roles(stage))) or "no role"
        name = f"stage `{stage.name}`" if m.stages else "a single stage"
        lines.append(
            f"  - {name}{dur}: runs {active}; trains {trained}"
            + "".join(f"; then `{a}` becomes `{b}`" for a, b in stage.handoffs)
        )
        for item in stage.train:
            if not (isinstance(item, ir.Tap) and item.point == "output"):
                lines.append(f"      trainable: {expr_text(item)}")
    for role in m.roles:
        if role.mode == "ema":
            decay = role.options.get("decay")
            shown = _value(decay, m.params) if decay is not None else "0.999"
            lines.append(
                f"  - after every optimizer step `{role.name}` moves towards "
                f"`{role.source}` (decay: {shown})"
            )
    if m.predictions:
        lines.append("")
        lines.append("Deployed:")
        for who, predicted in m.predictions.items():
            lines.append(f"  - `{who}` predicts {expr_text(predicted)} (evaluation scores this)")
    return "\n".join(lines)
