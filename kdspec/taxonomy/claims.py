"""KD311: a `claim` must agree with the taxonomy derived from the method graph."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.passes.context import PassContext
from kdspec.taxonomy.classify import classify
from kdspec.vocabulary import CLAIM_DIMENSIONS


def _values(values: tuple[str, ...] | list[str]) -> str:
    return "`" + ", ".join(values) + "`"


def check_claims(ctx: PassContext) -> list[Diagnostic]:
    """Each claim lists exactly the values the graph shows for its dimension.

    ``claim knowledge = feature, response`` holds when the transfers carry feature and response
    knowledge and nothing else; ``claim scheme = offline`` when every teaching edge is offline.
    Claims with unknown dimensions or values are KD212 (lowering) and are skipped here.
    """
    m = ctx.method
    claims = [
        (i, c)
        for i, c in enumerate(m.claims)
        if c.dimension in CLAIM_DIMENSIONS
        and all(v in CLAIM_DIMENSIONS[c.dimension] for v in c.values)
    ]
    if not claims:
        return []
    found_all = classify(ctx.graph)
    out: list[Diagnostic] = []
    for i, claim in claims:
        finding = found_all[claim.dimension]
        found = finding.labels
        claimed = tuple(dict.fromkeys(claim.values))
        if set(claimed) == set(found):
            continue
        missing = [v for v in found if v not in claimed]  # shown by the graph, left out
        wrong = [v for v in claimed if v not in found]  # claimed, not shown
        related: tuple[tuple[tuple[object, ...], str], ...] = ()
        reason = ""
        if missing:
            why = finding.why(missing[0])
            reason = why[0].text if why else f"the graph shows `{missing[0]}`"
            if why and why[0].path:
                related = ((why[0].path, f"`{missing[0]}` because of this"),)
        shown = _values(found) if found and found != ("none",) else "none"
        if wrong:
            # Blame the value that is claimed and absent; say why the graph shows what it does.
            message = f"claims `{wrong[0]}`, but the graph shows {shown}"
            if reason:
                message += f": {reason}"
        else:
            # Every claimed value holds: blame the one the claim leaves out.
            message = f"the claim leaves out `{missing[0]}`: {reason}"
        notes = tuple(
            dict.fromkeys(f"{label}: {e.text}" for label, evs in finding.support for e in evs)
        ) or tuple(e.text for e in finding.evidence)
        help_text = (
            f"claim what the graph shows (`claim {claim.dimension} = {', '.join(found)}`), "
            "or change the method"
            if found and all(v in CLAIM_DIMENSIONS[claim.dimension] for v in found)
            else "remove the claim, or change the method"
        )
        out.append(
            ctx.diag(
                "KD311",
                message,
                ("claim", i),
                f"the graph shows {_values(found) if found else 'nothing'}",
                notes=notes,
                help=help_text,
                related=related,
            )
        )
    return out
