"""``kdspec show [NAME...]``: the library's methods, or the source of one (to copy and edit)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="list the method library, or print a library method's source",
        description=__doc__,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="library method names (e.g. hinton)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdspec._resources import library_dir
    from kdspec.api import library_spec
    from kdspec.cli.common import UsageError

    if not args.names:
        for spec in sorted(library_dir().glob("*.kd")):
            print(spec.stem)
        return 0
    for i, name in enumerate(args.names):
        path = library_spec(name)
        if path is None:
            known = ", ".join(sorted(p.stem for p in library_dir().glob("*.kd")))
            raise UsageError(f"`{name}` is not a library method; the library has: {known}")
        if len(args.names) > 1:
            print(("\n" if i else "") + f"# --- {path.name}")
        print(path.read_text(encoding="utf-8"), end="")
    return 0
