"""``kdspec check PATH...``: parse, lower and check specs; report every diagnostic."""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import threading
from pathlib import Path

from kdspec.cli.common import parse_overrides, report
from kdspec.diagnostics import Diagnostic

FILES_PER_JOB = 16
"""Files a process must have before ``--jobs auto`` forks another: a fork and the pickling of
its diagnostics cost more than a handful of specs (a few ms each) take."""


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
    gc.disable()  # the front end's import makes long-lived objects only: nothing to collect
    try:
        from kdspec.api import spec_files
        from kdspec.diagnostics import error
    finally:
        gc.enable()

    overrides = parse_overrides(args.param)
    files = spec_files(args.paths, library=True)
    diags: list[Diagnostic] = []
    if not files:
        diags.append(error("KD105", "no .kd files found in " + ", ".join(args.paths)))
    # The imported front end lives as long as the process: frozen, the collector does not walk
    # it at every collection, nor at exit (a tenth of the command's time).
    gc.freeze()
    try:
        for found in _check_files(files, overrides, _jobs(args.jobs, len(files))):
            diags.extend(found)
    finally:
        if not getattr(args, "process_exits", False):
            gc.unfreeze()  # called in-process (tests, scripts): the collector as it was
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
    if sys.platform != "linux" or threading.active_count() > 1:  # forking threads deadlocks
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
    library are then loaded once, before the fork); the rest is shared between this process
    and ``jobs - 1`` forked children, each sending its diagnostics back through a pipe.
    """
    if jobs <= 1 or len(files) < 2:
        return [_check_file(path, overrides) for path in files]
    return _check_forked(files, overrides, jobs)


def _check_forked(
    files: list[Path], overrides: dict[str, object], jobs: int
) -> list[list[Diagnostic]]:
    found: list[list[Diagnostic]] = [_check_file(files[0], overrides)] + [[]] * (len(files) - 1)
    shares = [list(range(1 + i, len(files), jobs)) for i in range(jobs)]  # interleaved
    gc.freeze()  # and the prelude: a collection in a child would copy the pages it shares
    children = [(share, _fork_check([files[i] for i in share], overrides)) for share in shares[1:]]
    for i in shares[0]:
        found[i] = _check_file(files[i], overrides)
    for share, child in children:
        sent = _collect(*child) if child is not None else None
        if sent is None or len(sent) != len(share):  # no child, or it died: check here
            sent = [_check_file(files[i], overrides) for i in share]
        for i, diagnostics in zip(share, sent, strict=True):
            found[i] = diagnostics
    return found


def _fork_check(paths: list[Path], overrides: dict[str, object]) -> tuple[int, int] | None:
    """A forked child checking ``paths``: its pid and the pipe its pickled diagnostics come
    through (a pickle from our own fork, never from a file); None if none could be forked."""
    try:
        read_end, write_end = os.pipe()
    except OSError:  # out of file descriptors
        return None
    try:
        pid = os.fork()
    except OSError:  # out of processes or memory
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: check, send, and leave without the parent's exit handlers
        status = 1
        try:
            os.close(read_end)
            data = pickle.dumps([_check_file(path, overrides) for path in paths])
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end


def _collect(pid: int, read_end: int) -> list[list[Diagnostic]] | None:
    """What a child sent, or None when it did not finish (killed, out of memory, a bug)."""
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    try:
        sent: list[list[Diagnostic]] = pickle.loads(data)  # our own child's
    except Exception:  # cut short
        return None
    return sent
