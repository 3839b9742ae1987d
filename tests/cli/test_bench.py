"""`kdspec bench`: runs the packaged benchmarks and prints ratios (never asserted: no timings)."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("kind", ["steps", "memory", "compile"])
def test_bench_quick_runs_the_packaged_benchmark_in_its_smallest_configuration(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", kind, "--quick"]) == 0  # the code is kdspec.bench's, no scripts/
    out = capsys.readouterr().out
    assert "machine:" in out and "versions: python" in out
    assert "resnet8 -> resnet8, batch 4" in out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("hinton ")]
    median = {"steps": 1, "memory": 1, "compile": 5}[kind]
    assert float(row[median]) > 0  # whatever it is


def test_options_after_quick_win(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "steps", "--batch", "6"]) == 0
    assert "resnet8 -> resnet8, batch 6" in capsys.readouterr().out
