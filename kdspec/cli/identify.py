"""``kdspec identify SPEC``: which library method a spec is, by the structure of its graph.

Reports an exact match (same structure and hyperparameters), a match up to hyperparameters
(with the values that differ), a composition of library methods (each one's terms), or the
nearest methods with what differs. Names of roles, terms and parameters play no part.
"""

from __future__ import annotations

import argparse
import json

from kdspec.cli.common import parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "identify",
        help="match a spec against the method library",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  kdspec identify my_method.kd\n"
        "  kdspec identify specs/hinton.kd --param T=2",
    )
    p.add_argument("spec", help="a spec file (FILE:METHOD for one of several), or a library name")
    p.add_argument("--method", help="which method of the file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--library", help="a folder of specs to match against (default: the library)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdspec.cli.diff import split_method
    from kdspec.cli.taxonomy import load_one
    from kdspec.taxonomy.identify import identify

    spec, method = split_method(args.spec)
    low = load_one(spec, args.method or method, parse_overrides(args.param))
    result = identify(low, args.library)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.render())
    return 0
