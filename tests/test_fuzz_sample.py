"""A fixed-seed sample of the fuzz harness (scripts/fuzz.py): the hostile files of issue 13 and
a few thousand generated specs, run files and `--param` values give diagnostics only, no
internal error and no hang. The long runs are recorded in docs/reliability.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _fuzz():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kdspec_fuzz", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kdspec_fuzz"] = module
    spec.loader.exec_module(module)
    return module


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
    import kdspec.api

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(kdspec.api, "check_source", broken)
    report = fuzz.fuzz(cases=3, seed=1)
    assert sum(report.errors.values()) == 3
    assert any("ZeroDivisionError" in sig for sig in report.errors)
