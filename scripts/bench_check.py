"""Benchmark: `kdspec check specs/` must not import torch and must take well under a second.

Prints the in-process time of checking the whole library (parse, lower, graph, every pass),
the wall time of the command as a fresh process (interpreter start-up included), and whether
torch was imported. Run: `python scripts/bench_check.py`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
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
