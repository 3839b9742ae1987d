"""Benchmark: `kdspec check specs/` must not import torch and must take well under a second.

Prints the in-process time of checking the whole library (parse, lower, graph, every pass),
the wall time of the command as a fresh process (interpreter start-up included), with its
default workers and with `--jobs 1`, and whether torch was imported. Run:
`python scripts/bench_check.py`.

`--baseline DIR` (another checkout of kdspec, e.g. `git worktree add /tmp/old <commit>`) also
times `kdspec check` of the baseline's `specs/` with each version's code (this one with
`--jobs 1` and with its default workers), side by side in rounds whose order flips, as fresh
processes with their bytecode compiled beforehand (as an installed kdspec runs), and prints
the CPU seconds (workers included) and wall seconds of each, the CPU ratio of one process and
the wall ratio of the default.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another kdspec checkout to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.baseline is not None:
        return _side_by_side(args.baseline.resolve(), args.rounds)
    start = time.perf_counter()
    from kdspec.api import check_source, spec_files
    from kdspec.source import SourceFile

    files = spec_files([ROOT / "specs"])
    imported = time.perf_counter()
    n_diags = 0
    for path in files:
        _, diags = check_source(SourceFile.read(path))
        n_diags += len(diags)
    done = time.perf_counter()
    torch_loaded = "torch" in sys.modules
    command = [sys.executable, "-m", "kdspec", "check", str(ROOT / "specs")]
    cold = subprocess.run(command, capture_output=True)
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = subprocess.run([*command[:4], "--jobs", "1", *command[4:]], capture_output=True)
    wall_serial = time.perf_counter() - t0
    print(f"files checked:               {len(files)} ({n_diags} diagnostics)")
    print(f"import kdspec front end:     {imported - start:.3f} s")
    print(
        f"check all specs, in process: {done - imported:.3f} s "
        f"({(done - imported) / max(len(files), 1) * 1000:.1f} ms per spec)"
    )
    print(
        f"`kdspec check specs/` wall:  {wall:.3f} s, {wall_serial:.3f} s with --jobs 1 "
        f"(fresh processes, exit {proc.returncode}, {serial.returncode})"
    )
    print(f"torch imported:              {torch_loaded}")
    small, large = _scaling(1000), _scaling(4000)
    print(
        f"1,000 / 4,000 terms + claims: {small:.2f} / {large:.2f} CPU s "
        f"(ratio {large / small:.1f}; linear is 4, quadratic 16)"
    )
    ok = proc.returncode == cold.returncode == serial.returncode == 0
    return 0 if not torch_loaded and ok else 1


def _check_run(
    code: Path, specs: Path, env: dict[str, str], args: list[str]
) -> tuple[float, float]:
    """CPU seconds (user + system, its workers included) and wall seconds of `kdspec check
    specs` run with the kdspec of ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kdspec", "check", *args, str(specs)],
        capture_output=True,
        env={**env, "PYTHONPATH": str(code)},
        cwd=code,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"`kdspec check` with {code} failed:\n{proc.stdout.decode()[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def _side_by_side(baseline: Path, rounds: int) -> int:
    """This checkout (one process, and the default workers) against ``baseline`` on the
    baseline's specs, interleaved rounds."""
    specs = baseline / "specs"
    variants = {
        "baseline": (baseline, []),
        "this, --jobs 1": (ROOT, ["--jobs", "1"]),
        "this, default jobs": (ROOT, []),
    }
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache  # bytecode compiled once, as an installed kdspec
        for code, args in variants.values():  # compile the bytecode, warm the file cache
            _check_run(code, specs, env, args)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                code, args = variants[name]
                runs[name].append(_check_run(code, specs, env, args))
    n = len(list(specs.glob("*.kd")))
    print(f"`kdspec check` of {n} specs ({specs}), {rounds} rounds, medians:")
    print(f"  {'':<22}{'CPU s':>8}{'wall s':>8}  (baseline: {baseline})")
    for name, measured in runs.items():
        cpu = statistics.median(c for c, _ in measured)
        wall = statistics.median(w for _, w in measured)
        print(f"  {name:<22}{cpu:8.3f}{wall:8.3f}")
    for name, which, label in (("this, --jobs 1", 0, "CPU"), ("this, default jobs", 1, "wall")):
        ratios = sorted(
            a[which] / b[which] for a, b in zip(runs[name], runs["baseline"], strict=True)
        )
        ratio = statistics.median(ratios)
        spread = f"per round {ratios[0]:.3f} - {ratios[-1]:.3f}"
        print(f"  {label} ratio {name} / baseline: {ratio:.3f} ({spread})")
    return 0


def _scaling(terms: int) -> float:
    """CPU seconds to check a generated spec with ``terms`` terms and a claim per dimension."""
    from kdspec.api import check_source
    from kdspec.source import SourceFile

    body = "\n".join(
        f"  transfer k{i}: softmax(T=4) from t.logits to s.logits with kl" for i in range(terms)
    )
    claims = "claim scheme = offline claim knowledge = response claim stages = single"
    text = f"method m {{\n  teacher t\n  student s\n{body}\n  {claims}\n}}\n"
    start = time.process_time()
    check_source(SourceFile("gen.kd", text))
    return time.process_time() - start


if __name__ == "__main__":
    sys.exit(main())
