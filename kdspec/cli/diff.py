"""``kdspec diff A B``: what changes from method A to method B.

Roles, terms, stages, parameters, data and claims are matched by name, then by content (a
renamed part with nothing else changed shows as renamed). ``SPEC@STAGE`` stands for one stage
of a spec: its active terms and the roles they use, e.g. the two stages of FitNets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdspec.cli.common import UsageError, parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two methods (or two stages)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  kdspec diff specs/hinton.kd specs/dkd.kd\n"
        "  kdspec diff specs/fitnets.kd@hints specs/fitnets.kd@distill",
    )
    p.add_argument("a", metavar="A", help="a spec file, library name, or SPEC@STAGE")
    p.add_argument("b", metavar="B", help="the same, compared against A")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="applied to both")
    p.set_defaults(run=run)


def split_stage(arg: str) -> tuple[str, str | None]:
    """``specs/fitnets.kd@hints`` -> (``specs/fitnets.kd``, ``hints``); a plain spec as is."""
    from kdspec.cli.taxonomy import resolve

    if resolve(arg).exists() or "@" not in arg:
        return arg, None
    spec, _, stage = arg.rpartition("@")
    return spec, stage or None


def _load(arg: str, overrides: dict[str, object]):
    from kdspec.cli.taxonomy import load_one
    from kdspec.taxonomy.diff import stage_view

    spec, stage = split_stage(arg)
    method = load_one(spec, None, overrides).method
    if stage is None:
        return method, f"{spec} ({method.name})"
    try:
        view = stage_view(method, stage)
    except KeyError:
        names = ", ".join(s.name for s in method.effective_stages())
        raise UsageError(f"`{Path(spec).name}` has no stage `{stage}` (stages: {names})") from None
    return view, f"{spec} @ stage {stage}"


def run(args: argparse.Namespace) -> int:
    from kdspec.taxonomy.diff import diff, render

    overrides = parse_overrides(args.param)
    a, a_label = _load(args.a, overrides)
    b, b_label = _load(args.b, overrides)
    print(render(diff(a, b), a_label, b_label))
    return 0
