"""Benchmark: `kdspec check specs/` must not import torch and must take well under a second.

Prints the in-process time of checking the whole library (parse, lower, graph, every pass),
the wall time of the command as a fresh process (interpreter start-up included), and whether
torch was imported. Run: `python scripts/bench_check.py`.

`--baseline DIR` (another checkout of kdspec, e.g. `git worktree add /tmp/old <commit>`) also
times `kdspec check` of the baseline's `specs/` with each version's code, side by side in
rounds whose order flips, as fresh processes with their bytecode compiled beforehand (as an
installed kdspec runs), and prints the CPU seconds of each and their ratio.
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
    cold = subprocess.run(
        [sys.executable, "-m", "kdspec", "check", str(ROOT / "specs")], capture_output=True
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kdspec", "check", str(ROOT / "specs")], capture_output=True
    )
    wall = time.perf_counter() - t0
    print(f"files checked:               {len(files)} ({n_diags} diagnostics)")
    print(f"import kdspec front end:     {imported - start:.3f} s")
    print(
        f"check all specs, in process: {done - imported:.3f} s "
        f"({(done - imported) / max(len(files), 1) * 1000:.1f} ms per spec)"
    )
    print(f"`kdspec check specs/` wall:  {wall:.3f} s (fresh process, exit {proc.returncode})")
    print(f"torch imported:              {torch_loaded}")
    small, large = _scaling(1000), _scaling(4000)
    print(
        f"1,000 / 4,000 terms + claims: {small:.2f} / {large:.2f} CPU s "
        f"(ratio {large / small:.1f}; linear is 4, quadratic 16)"
    )
    return 0 if not torch_loaded and proc.returncode == cold.returncode == 0 else 1


def _check_cpu(code: Path, specs: Path, env: dict[str, str]) -> float:
    """CPU seconds (user + system) of `kdspec check specs` run with the kdspec of ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "kdspec", "check", str(specs)],
        capture_output=True,
        env={**env, "PYTHONPATH": str(code)},
        cwd=code,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"`kdspec check` with {code} failed:\n{proc.stdout.decode()[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _side_by_side(baseline: Path, rounds: int) -> int:
    """This checkout against ``baseline`` on the baseline's specs, interleaved rounds."""
    specs = baseline / "specs"
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache  # bytecode compiled once, as an installed kdspec
        versions = {"this": ROOT, "baseline": baseline}
        for code in versions.values():  # compile the bytecode, warm the file cache
            _check_cpu(code, specs, env)
        cpu: dict[str, list[float]] = {name: [] for name in versions}
        for r in range(rounds):
            order = list(versions) if r % 2 == 0 else list(reversed(versions))
            for name in order:
                cpu[name].append(_check_cpu(versions[name], specs, env))
    this, base = statistics.median(cpu["this"]), statistics.median(cpu["baseline"])
    ratios = sorted(a / b for a, b in zip(cpu["this"], cpu["baseline"], strict=True))
    n = len(list(specs.glob("*.kd")))
    print(f"`kdspec check` of {n} specs ({specs}), {rounds} rounds, CPU seconds (median):")
    print(f"  baseline ({baseline}): {base:.3f} s")
    print(f"  this checkout:         {this:.3f} s")
    spread = f"per round {ratios[0]:.3f} - {ratios[-1]:.3f}"
    print(f"  ratio this / baseline: {this / base:.3f} ({spread})")
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
