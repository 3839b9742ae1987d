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


def test_slow_inputs_are_kept_with_their_command_and_replayed(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--keep-slow DIR` writes each slow input and what it was run as; `--replay DIR` runs
    them again in fresh workers (a case slow only in a long-lived worker points at state the
    worker gathered). Every case counts as slow here, so every one is kept."""
    fuzz = _fuzz()
    monkeypatch.setattr(fuzz, "SLOW_LIMIT", -1.0)
    report = fuzz.fuzz(cases=2, seed=1, keep=tmp_path)
    assert report.slow == 2
    kept = list(fuzz._kept(tmp_path))
    assert [case.data for _, case, _ in kept] == [data for _, data in fuzz.pathological()[:2]]
    assert all(meta["command"] and meta["age"] == i for i, (_, _, meta) in enumerate(kept))
    lines: list[str] = []
    replayed = fuzz.replay(tmp_path, out=lines.append)
    assert [name for name, _ in replayed] == ["slow-0001", "slow-0002"]
    assert all(done is not None and done.age == 0 and done.result is None for _, done in replayed)
    assert len(lines) == 3 and "fresh worker" in lines[0]
