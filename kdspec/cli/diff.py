"""``kdspec diff A B``: what changes from method A to method B.

The two methods are compared in canonical form: roles and terms are paired by structure, not
by name (a renamed part shows as renamed), and a value spelt another way is no change.
``FILE:METHOD`` picks one method of a file that holds several (a file with several methods and
no ``:METHOD`` is a usage error that lists them); ``SPEC@STAGE`` stands for one stage of a
spec: its active terms and the roles they use, e.g. the two stages of FitNets.
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
        "  kdspec diff specs/fitnets.kd@hints specs/fitnets.kd@distill\n"
        "  kdspec diff variants.kd:mine specs/hinton.kd",
    )
    p.add_argument("a", metavar="A", help="a spec file, library name, FILE:METHOD or SPEC@STAGE")
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


def split_method(spec: str) -> tuple[str, str | None]:
    """``variants.kd:mine`` -> (``variants.kd``, ``mine``); a plain spec as is."""
    from kdspec.cli.taxonomy import resolve

    if resolve(spec).exists() or ":" not in spec:
        return spec, None
    path, _, method = spec.rpartition(":")
    return path, method or None


def _load(arg: str, overrides: dict[str, object]):
    from kdspec.cli.taxonomy import load_one
    from kdspec.taxonomy.diff import stage_view

    spec, stage = split_stage(arg)
    spec, method_name = split_method(spec)
    low = load_one(spec, method_name, overrides)
    method = low.method
    label = f"{spec} ({method.name})"
    if stage is None:
        return method, label
    try:
        view = stage_view(method, stage)
    except KeyError:
        names = ", ".join(s.name for s in method.effective_stages())
        raise UsageError(f"`{Path(spec).name}` has no stage `{stage}` (stages: {names})") from None
    return view, f"{spec} @ stage {stage}" if method_name is None else f"{label} @ stage {stage}"


def run(args: argparse.Namespace) -> int:
    from kdspec.taxonomy.diff import diff, render

    overrides = parse_overrides(args.param)
    a, a_label = _load(args.a, overrides)
    b, b_label = _load(args.b, overrides)
    print(render(diff(a, b), a_label, b_label))
    return 0
