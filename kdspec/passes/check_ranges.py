"""KD310: tap ranges of different lengths need a `map` rule to pair their layers."""

from __future__ import annotations

from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.passes.context import PassContext


def _static_length(first: int | None, last: int | None) -> int | None:
    if first is None or last is None or (first < 0) != (last < 0):
        return None
    return last - first + 1


def check_ranges(ctx: PassContext) -> list[Diagnostic]:
    """Ranges whose lengths are known from the spec alone must agree, unless mapped."""
    m = ctx.method
    out: list[Diagnostic] = []
    for term in m.terms:
        if term.kind != "transfer" or term.mapping is not None:
            continue
        lengths = {}
        for side in ("source", "target"):
            for tap, _ in types.taps(getattr(term, side), m):
                if tap.is_range:
                    n = _static_length(tap.first, tap.last)
                    if n is not None:
                        lengths[side] = n
                    if n is not None and n <= 0:
                        out.append(
                            ctx.diag(
                                "KD206",
                                f"empty range `{types.tap_text(tap)}`",
                                ("term", term.name, side),
                                "no layers selected",
                            )
                        )
        if len(lengths) == 2 and lengths["source"] != lengths["target"]:
            out.append(
                ctx.diag(
                    "KD310",
                    f"`{term.name}` pairs {lengths['source']} teacher layers with "
                    f"{lengths['target']} student layers",
                    ("term", term.name, "target"),
                    f"{lengths['target']} layers",
                    related=((("term", term.name, "source"), f"{lengths['source']} layers"),),
                    help="add a mapping rule: `map uniform`, `map last`, `map first` or "
                    "`map all_pairs`",
                )
            )
    return out
