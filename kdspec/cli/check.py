"""``kdspec check PATH...``: parse, lower and check specs; report every diagnostic."""

from __future__ import annotations

import argparse

from kdspec.cli.common import parse_overrides, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check specs for errors", description=__doc__)
    p.add_argument(
        "paths", nargs="+", help="spec files, folders (searched recursively) or library names"
    )
    p.add_argument("--format", choices=["full", "concise", "json"], default="full")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter")
    p.add_argument("--max-errors", type=int, default=None, help="show at most this many")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdspec.api import check_source, read_source, spec_files
    from kdspec.diagnostics import Diagnostic, error

    overrides = parse_overrides(args.param)
    files = spec_files(args.paths, library=True)
    diags: list[Diagnostic] = []
    if not files:
        diags.append(error("KD105", "no .kd files found in " + ", ".join(args.paths)))
    for path in files:
        source = read_source(path)
        if isinstance(source, Diagnostic):
            diags.append(source)
            continue
        _, found = check_source(source, overrides)
        diags.extend(found)
    shown = diags[: args.max_errors] if args.max_errors else diags
    code = report(shown, args.format)
    if not diags and args.format != "json":
        print(f"checked {len(files)} file{'s' * (len(files) != 1)}: no problems found")
    return 1 if any(d.severity.value == "error" for d in diags) else code
