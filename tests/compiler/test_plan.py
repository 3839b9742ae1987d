"""``kdspec plan``: the compiled plan on zoo models, pinned by golden files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden_util import assert_golden

from kdspec.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "tests" / "golden" / "plan"

# (golden name, spec, run file or None for the default digits job with zoo cnn_small/cnn_tiny)
CASES = [
    ("hinton_digits", "hinton", None),
    ("fitnets_digits", "fitnets", None),
    ("crd_digits", "crd", None),
    ("at_resnets", "at", "resnets.toml"),
    ("fitnets_resnets", "fitnets", "resnets.toml"),
]


def _plan(capsys: pytest.CaptureFixture[str], spec: str, run: str | None, *extra: str) -> str:
    args = ["plan", spec, *(["--run", str(PLANS / run)] if run else []), *extra]
    assert main(args) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("name", "spec", "run"), CASES, ids=[c[0] for c in CASES])
def test_plan_golden(capsys, update_golden: bool, name: str, spec: str, run: str | None) -> None:
    assert_golden(PLANS / f"{name}.plan", _plan(capsys, spec, run), update_golden)


def test_plan_trains_no_teacher_and_json_has_every_part(capsys, teacher_cache: Path) -> None:
    before = sorted(teacher_cache.rglob("teacher.pt"))
    plan = json.loads(_plan(capsys, "fitnets", None, "--format", "json"))
    assert sorted(teacher_cache.rglob("teacher.pt")) == before  # shapes only: nothing trained
    assert set(plan) == {"method", "roles", "taps", "adapters", "terms", "stages"}
    assert [a["func"] for a in plan["adapters"]] == ["regressor"]
    assert [s["name"] for s in plan["stages"]] == ["hints", "distill"]
