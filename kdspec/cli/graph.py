"""``kdspec graph SPEC --format dot|mermaid|json|png|svg [-o FILE]``: the method as a picture."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from kdspec.cli.common import UsageError, parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help="draw the method graph", description=__doc__)
    p.add_argument("spec")
    p.add_argument("--format", choices=["dot", "mermaid", "json", "png", "svg"], default="dot")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.add_argument("--method", help="which method of the file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--no-legend", action="store_true", help="leave out the taxonomy legend")
    p.set_defaults(run=run)


def _legend(kg: object) -> str | None:
    try:
        from kdspec.taxonomy.classify import classify
    except ImportError:
        return None
    return classify(kg).legend()  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from kdspec.api import load_method
    from kdspec.diagnostics import KdError, error
    from kdspec.graph import build_graph
    from kdspec.graph.export import to_dot, to_json, to_mermaid

    low = load_method(args.spec, args.method, parse_overrides(args.param))
    kg = build_graph(low.method)
    legend = None if args.no_legend else _legend(kg)
    if args.format in ("png", "svg"):
        dot = shutil.which("dot")
        if dot is None:
            raise UsageError(
                f"--format {args.format} needs Graphviz's `dot` on PATH "
                "(apt-get install graphviz); --format dot|mermaid|json work without"
            )
        if not args.output:
            raise UsageError(f"--format {args.format} writes a binary file: give -o FILE")
        done = subprocess.run(
            [dot, f"-T{args.format}", "-o", args.output],
            input=to_dot(kg, legend),
            text=True,
            capture_output=True,
        )
        if done.returncode != 0:
            raise KdError(
                [error("KD505", f"`dot` could not write `{args.output}`: {done.stderr.strip()}")]
            )
        print(f"wrote {args.output}")
        return 0
    text = {
        "dot": lambda: to_dot(kg, legend),
        "mermaid": lambda: to_mermaid(kg, legend),
        "json": lambda: to_json(kg),
    }[args.format]()
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise KdError(
                [error("KD505", f"cannot write `{args.output}`: {exc.strerror or exc}")]
            ) from None
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
