"""``kdspec explain SPEC`` (the method in plain English) or ``kdspec explain KD301``."""

from __future__ import annotations

import argparse
import re

from kdspec.cli.common import parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="describe a method, or a diagnostic code", description=__doc__
    )
    p.add_argument("target", help="a spec file, a library method name, or a code like KD301")
    p.add_argument("--method", help="which method of the file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if re.fullmatch(r"(?i)KD\d{3}", args.target):
        from kdspec.diagnostics import describe

        text = describe(args.target)
        if text is None:
            print(f"error: unknown diagnostic code `{args.target}`")
            return 2
        print(text)
        return 0
    from kdspec.api import load_method
    from kdspec.graph import build_graph
    from kdspec.graph.explain import explain

    low = load_method(args.target, args.method, parse_overrides(args.param))
    print(explain(build_graph(low.method)))
    return 0
