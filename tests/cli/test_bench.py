"""`kdspec bench`: runs the benchmark scripts and prints ratios (never asserted: no timings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdspec.cli import bench
from kdspec.cli.main import main

SMALL = ["--teacher", "resnet8", "--student", "resnet8", "--batch", "4", "--rounds", "1"]


@pytest.mark.parametrize(
    ("kind", "extra"), [("steps", ["--steps", "1"]), ("memory", [])], ids=["steps", "memory"]
)
def test_bench_prints_machine_versions_and_a_ratio_per_method(
    kind: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", kind, "--methods", "hinton,at", *SMALL, *extra]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "versions: python" in out and "torch" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:2] in "hiat"}
    for method in ("hinton", "at"):
        assert float(rows[method][0]) > 0  # the median ratio, whatever it is


def test_bench_outside_a_source_checkout_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "scripts_dir", lambda: tmp_path)
    assert main(["bench"]) == 2
    assert "source checkout" in capsys.readouterr().err
