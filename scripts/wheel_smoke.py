"""Build the wheel, install it in a fresh venv outside the source tree, and use it.

    python scripts/wheel_smoke.py        (make test-wheel; .ci/run runs it)

The venv is new and empty but for the wheel: its dependencies (torch, lark, ...) are the ones
of the interpreter running this script, put on its path by a ``.pth`` file (so nothing is
downloaded and torch stays the CPU build). From a temporary folder with no kdspec source, it
runs ``kdspec check`` on a spec ``kdspec init`` wrote, ``kdspec train hinton`` (the library
spec found by name, on the embedded digits data, one epoch), ``kdspec taps``, ``kdspec
explain`` and ``kdspec bench --quick``, and checks the kdspec it ran is the installed wheel.
Prints the time taken.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    print("$", " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-3000:])
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdspec-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        sh(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist",
           ROOT, cwd=tmp)  # fmt: skip
        wheel = next((tmp / "dist").glob("kdspec-*.whl"))
        venv = tmp / "venv"
        sh(sys.executable, "-m", "venv", venv, cwd=tmp)
        py = venv / "bin" / "python"
        site = sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp)
        # The dependencies of this interpreter, not its kdspec (an editable install is a .pth in
        # there, which a path entry does not run).
        (Path(site.strip()) / "outer-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        sh(py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel, cwd=tmp)
        work = tmp / "work"
        work.mkdir()
        env = {**os.environ, "KDSPEC_CACHE": str(tmp / "cache"), "CI": "1", "PYTHONPATH": ""}
        env.pop("VIRTUAL_ENV", None)
        kd = venv / "bin" / "kdspec"
        where = sh(py, "-c", "import kdspec.api, pathlib; print(kdspec.api.__file__)", cwd=work)
        assert str(venv) in where, f"kdspec imported from {where.strip()}, not the wheel"
        shipped = sh(py, "-c", "from kdspec._resources import data_dir as d; "
                     "print(*(d(n) for n in ('grammar', 'specs', 'runs')))", cwd=work)  # fmt: skip
        assert all(str(venv) in p for p in shipped.split()), f"data not in the wheel: {shipped}"
        sh(kd, "init", "starter", cwd=work, env=env)
        print(sh(kd, "check", "starter.kd", cwd=work, env=env))
        out = sh(kd, "train", "hinton", "--epochs", "1", "--quiet", "--out", "run", cwd=work,
                 env=env)  # fmt: skip
        print(out)
        assert "s distilled (hinton)" in out and (work / "run" / "metrics.jsonl").is_file()
        print(sh(kd, "taps", "resnet8", "--no-modules", cwd=work, env=env))
        assert "hinton" in sh(kd, "explain", "hinton", cwd=work, env=env).lower()
        bench = sh(kd, "bench", "--quick", cwd=work, env=env)  # the packaged benchmark
        print(bench)
        assert "machine:" in bench and any(r.startswith("hinton ") for r in bench.splitlines())
        assert not (work / "kdspec").exists()
    print(f"wheel smoke test passed in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
