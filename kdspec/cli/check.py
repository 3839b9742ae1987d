"""``kdspec check PATH...``: parse, lower and check specs; report every diagnostic."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kdspec.cli.common import parse_overrides, report
from kdspec.diagnostics import Diagnostic

FILES_PER_JOB = 16
"""Files a worker must have before ``--jobs auto`` starts it: a worker costs a fork and the
pickling of its diagnostics, which a handful of specs (a few ms each) does not pay back."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check specs for errors", description=__doc__)
    p.add_argument(
        "paths", nargs="+", help="spec files, folders (searched recursively) or library names"
    )
    p.add_argument("--format", choices=["full", "concise", "json"], default="full")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter")
    p.add_argument("--max-errors", type=int, default=None, help="show at most this many")
    p.add_argument(
        "--jobs",
        "-j",
        type=_jobs_arg,
        default=0,
        metavar="N",
        help="check files in N processes (default: one per CPU for large folders, on Linux)",
    )
    p.set_defaults(run=run)


def _jobs_arg(text: str) -> int:
    if text == "auto":
        return 0
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or `auto`, got {text!r}")
    return n


def run(args: argparse.Namespace) -> int:
    from kdspec.api import spec_files
    from kdspec.diagnostics import error

    overrides = parse_overrides(args.param)
    files = spec_files(args.paths, library=True)
    diags: list[Diagnostic] = []
    if not files:
        diags.append(error("KD105", "no .kd files found in " + ", ".join(args.paths)))
    for found in _check_files(files, overrides, _jobs(args.jobs, len(files))):
        diags.extend(found)
    shown = diags[: args.max_errors] if args.max_errors else diags
    code = report(shown, args.format)
    if not diags and args.format != "json":
        print(f"checked {len(files)} file{'s' * (len(files) != 1)}: no problems found")
    return 1 if any(d.severity.value == "error" for d in diags) else code


def _check_file(path: Path, overrides: dict[str, object]) -> list[Diagnostic]:
    from kdspec.api import check_source, read_source

    source = read_source(path)
    if isinstance(source, Diagnostic):
        return [source]
    return check_source(source, overrides)[1]


def _jobs(asked: int, n_files: int) -> int:
    """Processes to check ``n_files`` with: as asked, else one per CPU this process may use
    (at most 8) where each gets FILES_PER_JOB files; one where workers cannot be forked."""
    if sys.platform != "linux":  # fork is the start method that inherits the warm caches
        return 1
    if asked:
        return max(1, min(asked, n_files))
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(cpus, 8, n_files // FILES_PER_JOB))


def _check_files(
    files: list[Path], overrides: dict[str, object], jobs: int
) -> list[list[Diagnostic]]:
    """Each file's diagnostics, in the order of ``files`` (the same output for any ``jobs``).

    With more than one job the first file is checked here (the parser, the prelude and the
    library are then loaded once, before the fork) and the rest by forked workers.
    """
    if jobs <= 1 or len(files) < 2:
        return [_check_file(path, overrides) for path in files]
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    first = _check_file(files[0], overrides)
    rest = files[1:]
    check = functools.partial(_check_file, overrides=overrides)
    chunk = max(1, len(rest) // (jobs * 4))  # small chunks: specs differ in size
    fork = multiprocessing.get_context("fork")
    try:  # an executor, not a Pool: a worker that dies (out of memory) fails it, never hangs it
        with ProcessPoolExecutor(jobs, mp_context=fork) as pool:
            found = list(pool.map(check, rest, chunksize=chunk))
    except BrokenProcessPool:  # checked here instead, where the cause shows itself
        found = [check(path) for path in rest]
    return [first, *found]
