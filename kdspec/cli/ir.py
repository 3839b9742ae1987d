"""``kdspec ir SPEC`` (the validated IR as JSON) or ``kdspec ir --schema`` (its JSON Schema)."""

from __future__ import annotations

import argparse
import json

from kdspec.cli.common import UsageError, parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ir", help="print a method's IR as JSON, or the IR's JSON Schema", description=__doc__
    )
    p.add_argument("spec", nargs="?", help="a spec file or library method name")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of the IR")
    p.add_argument("--method", help="which method of the file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdspec.ir.models import Method

    if args.schema:
        print(json.dumps(Method.model_json_schema(), indent=2))
        return 0
    if not args.spec:
        raise UsageError("give a spec, or --schema")
    from kdspec.api import load_method

    low = load_method(args.spec, args.method, parse_overrides(args.param))
    print(low.method.model_dump_json(indent=2))
    return 0
