"""Entry point of the ``kdspec`` command: dispatch to one module per subcommand.

Exit codes: 0 clean (warnings allowed), 1 diagnostics with errors, 2 usage or internal error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = (
    "check",
    "show",
    "fmt",
    "graph",
    "explain",
    "ir",
    "taps",
    "plan",
    "train",
    "compare",
    "reproduce",
    "taxonomy",
    "identify",
    "diff",
    "lsp",
    "importer",
    "init",
    "export",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdspec",
        description="A declarative language and compiler for knowledge distillation.",
        epilog="examples:\n  kdspec check specs/\n  kdspec train "
        "specs/hinton.kd\n  kdspec explain specs/at.kd\n  kdspec explain KD301",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"kdspec.cli.{name}").add_parser(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--import-root",
            action="append",
            default=[],
            metavar="DIR",
            help="also allow spec `import`s from DIR (default: the spec's folder and the library)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; never lets a Python traceback reach the user."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    args.process_exits = argv is None  # the process's own command line: it ends with the command
    if not getattr(args, "import_root", None):
        return _run(args)
    from pathlib import Path

    from kdspec.ir.lower import IMPORT_ROOTS

    token = IMPORT_ROOTS.set(tuple(Path(p) for p in args.import_root))
    try:  # the roots hold for this command only (main may be called again in-process)
        return _run(args)
    finally:
        IMPORT_ROOTS.reset(token)


def _run(args: argparse.Namespace) -> int:
    """Run a parsed command; diagnostics, usage and internal errors become exit codes."""
    from kdspec.cli.common import UsageError, report
    from kdspec.diagnostics import KdError

    try:
        return int(args.run(args))
    except KdError as exc:
        report(
            exc.diagnostics,
            getattr(args, "format", "full")
            if getattr(args, "format", "full") in ("full", "concise", "json")
            else "full",
        )
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("KDSPEC_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "(this is a bug in kdspec; rerun with KDSPEC_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
