"""``kdspec taxonomy PATH... [--format table|json|markdown] [--why]``: classify methods.

One row per method and one column per dimension, every label derived from the method graph.
``--why`` adds the graph facts behind each label. Claims that the graph contradicts (KD311)
are reported after the table, and make the command exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kdspec.cli.common import parse_overrides, report

# Shown in tables; the full set is `classify.DIMENSIONS`.
HEADERS = {
    "roles": "roles",
    "topology": "topology",
    "teacher_state": "teacher state",
    "scheme": "scheme",
    "knowledge": "knowledge",
    "taps": "taps (T -> S)",
    "mapping": "layer mapping",
    "transforms": "transforms",
    "adapters": "adapters",
    "losses": "losses",
    "weights": "weights",
    "stages": "stages",
    "data": "data preparation",
    "ground_truth": "labels",
    "architecture": "T/S architecture",
    "initialisation": "learner init",
    "algorithm": "algorithm (Gou)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "taxonomy",
        help="classify methods along every survey dimension",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  kdspec taxonomy specs/\n  kdspec taxonomy specs/fitnets.kd --why\n"
        "  kdspec taxonomy specs/ --format markdown > table.md",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec files, folders or library names")
    p.add_argument(
        "--format",
        dest="table_format",
        choices=["table", "json", "markdown"],
        default="table",
        help="output format (default: table)",
    )
    p.add_argument("--why", action="store_true", help="print the evidence for every label")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.set_defaults(run=run)


def resolve(spec: str | Path) -> Path:
    """A spec path, or a library method's file when ``spec`` is a bare method name."""
    from kdspec._resources import library_dir

    path = Path(spec)
    if not path.exists() and (library_dir() / f"{spec}.kd").exists():
        return library_dir() / f"{spec}.kd"
    return path


def load_all(paths: Sequence[str | Path], overrides: dict[str, object] | None = None):
    """Every method of the named files, and the KD311 diagnostics found on the way.

    Raises:
        KdError: with every error other than a contradicted claim (KD311), which does not stop
            a method from being classified, identified or compared.
    """
    from kdspec.api import check_source, read_source, spec_files
    from kdspec.diagnostics import Diagnostic, KdError, Severity

    methods = []
    errors: list[Diagnostic] = []
    claims: list[Diagnostic] = []
    for path in spec_files([resolve(p) for p in paths]):
        source = read_source(path)
        if isinstance(source, Diagnostic):
            errors.append(source)
            continue
        lowered, diags = check_source(source, overrides)
        for d in diags:
            if d.severity is Severity.ERROR:
                (claims if d.code == "KD311" else errors).append(d)
        methods.extend(lowered)
    if errors:
        raise KdError(errors)
    return methods, claims


def load_one(spec: str, method: str | None = None, overrides: dict[str, object] | None = None):
    """One method of a file, KD311 tolerated: the only one, or the one ``method`` names (a
    file of several methods and no name is a usage error that lists them)."""
    from kdspec.cli.common import UsageError

    methods, _ = load_all([spec], overrides)
    if not methods:
        raise UsageError(f"`{spec}` defines no method")
    if method is None:
        if len(methods) > 1:
            names = ", ".join(low.method.name for low in methods)
            raise UsageError(
                f"`{spec}` defines {len(methods)} methods ({names}): say which one, "
                f"e.g. `{spec}:{methods[0].method.name}`"
            )
        return methods[0]
    for low in methods:
        if low.method.name == method:
            return low
    names = ", ".join(low.method.name for low in methods)
    raise UsageError(f"no method `{method}` in `{spec}` (methods: {names})")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(classifications: Sequence[object], dims: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per method, one column per dimension."""
    from kdspec.taxonomy.classify import DIMENSIONS

    dims = list(dims or DIMENSIONS)
    lines = [
        "| method | " + " | ".join(HEADERS.get(d, d) for d in dims) + " |",
        "|---|" + "---|" * len(dims),
    ]
    for c in classifications:
        values = c.labels()  # type: ignore[attr-defined]
        lines.append(
            f"| `{c.method}` | "  # type: ignore[attr-defined]
            + " | ".join(_cell(values[d]) for d in dims)
            + " |"
        )
    return "\n".join(lines)


def evidence_text(c: object, markdown: bool = False) -> str:
    """Every dimension's value and the graph facts behind it."""
    lines = [f"### `{c.method}`", ""] if markdown else [f"{c.method}:"]  # type: ignore[attr-defined]
    for f in c.findings:  # type: ignore[attr-defined]
        head = HEADERS.get(f.dimension, f.dimension)
        lines.append(f"- **{head}**: {f.value}" if markdown else f"  {head}: {f.value}")
        for e in f.evidence:
            lines.append(f"  - {e.text}" if markdown else f"      - {e.text}")
    return "\n".join(lines)


def _plain_table(classifications: Sequence[object]) -> str:
    from kdspec.taxonomy.classify import DIMENSIONS

    if len(classifications) == 1:  # one method: a column per dimension would be 400 wide
        (c,) = classifications
        labels = c.labels()  # type: ignore[attr-defined]
        width = max(len(HEADERS[d]) for d in DIMENSIONS)
        lines = [f"{'method'.ljust(width)}  {c.method}"]  # type: ignore[attr-defined]
        lines += [f"{HEADERS[d].ljust(width)}  {labels[d]}" for d in DIMENSIONS]
        return "\n".join(line.rstrip() for line in lines)
    header = ["method", *(HEADERS[d] for d in DIMENSIONS)]
    rows = [header] + [
        [c.method, *(c.labels()[d] for d in DIMENSIONS)]  # type: ignore[attr-defined]
        for c in classifications
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for k, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from kdspec.graph import build_graph
    from kdspec.taxonomy.classify import classify

    methods, claims = load_all(args.paths, parse_overrides(args.param))
    found = [classify(build_graph(low.method)) for low in methods]
    if args.table_format == "json":
        print(json.dumps([c.to_dict(evidence=args.why) for c in found], indent=2))
    elif args.table_format == "markdown":
        print(markdown_table(found))
        if args.why:
            print()
            print("\n\n".join(evidence_text(c, markdown=True) for c in found))
    else:
        print(_plain_table(found))
        if args.why:
            print()
            print("\n\n".join(evidence_text(c) for c in found))
    sys.stdout.flush()
    if claims:
        return report(claims)
    return 0
