"""A fixed-seed sample of the fuzz harness (scripts/fuzz.py): the hostile files of issue 13 and
a few thousand generated specs, run files and `--param` values give diagnostics only, no
internal error and no hang. The long runs are recorded in docs/reliability.md."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _fuzz():  # type: ignore[no-untyped-def]
    # Imported under its own name from a folder on sys.path: the spawned workers import the
    # module the same way (they inherit sys.path) to find their entry point.
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module("fuzz")


def test_a_fixed_seed_sample_finds_no_internal_error_and_no_hang() -> None:
    fuzz = _fuzz()
    report = fuzz.fuzz(cases=2000, seed=1)
    lines: list[str] = []
    report.print(report.elapsed, out=lines.append)
    assert report.cases == 2000
    assert not report.errors and not report.hangs, "\n".join(lines)
    assert report.by_kind["spec"] and report.by_kind["run"] and report.by_kind["param"]


def test_the_harness_reports_an_internal_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The harness itself can fail: a crash planted in the checker is counted with its input."""
    fuzz = _fuzz()
    monkeypatch.setenv(fuzz.PLANT_CRASH, "1")
    report = fuzz.fuzz(cases=3, seed=1)
    assert sum(report.errors.values()) == 3
    assert any("ZeroDivisionError" in sig for sig in report.errors)
