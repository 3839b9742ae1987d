"""``kdspec plan``: the compiled plan on zoo models, pinned by golden files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


# -- the plan is what runs -------------------------------------------------------------------


def _fitnets() -> Any:
    import torch

    from kdspec.api import load_method
    from kdspec.compiler import compile_spec
    from kdspec.zoo import build_model

    torch.manual_seed(0)
    models = {"t": build_model("cnn_small", 4, 1), "s": build_model("cnn_tiny", 4, 1)}
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,)))
    return compile_spec(load_method("fitnets"), models, batch), batch


def test_the_compiled_plan_is_frozen_and_is_what_the_distiller_runs() -> None:
    import dataclasses

    import torch

    from kdspec.compiler import CompiledPlan, Distiller, Progress

    d, batch = _fitnets()
    plan = d.compiled_plan()
    assert isinstance(plan, CompiledPlan) and plan.roles is d.roles and plan.terms is d.terms
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.terms = None  # type: ignore[misc]
    # A second Distiller on the same plan computes the same terms: the plan holds all it runs.
    again = Distiller(plan)
    progress = Progress.at(0, 10, 100)
    for run in (d, again):
        run.set_stage("distill")
    a, b = d(batch, progress=progress), again(batch, progress=progress)
    assert set(a.terms) == set(b.terms) == {"kd", "ce"}
    for name in a.terms:
        assert torch.equal(a.terms[name], b.terms[name])
    # What a stage trains is the plan's answer; the Distiller's is the current stage's.
    hints = plan.stage("hints")
    d.set_stage("hints")
    assert [id(p) for p in d.trainable_parameters()] == [
        id(p) for p in plan.trainable_parameters(hints)
    ]
    adapter = {id(p) for n in plan.lets.values() for p in n.parameters()} | {
        id(p) for t in plan.active_terms(hints) for p in t.parameters()
    }
    assert adapter & {id(p) for p in plan.trainable_parameters(hints)}


def test_describe_is_what_kdspec_plan_prints() -> None:
    d, _ = _fitnets()
    summary = d.compiled_plan().describe()
    assert d.compiled_plan().explain() == summary.explain()
    assert [s.name for s in summary.stages] == ["hints", "distill"]
    assert [t.points for t in summary.taps if t.tap.startswith("s.")]
    assert {t.name: t.weight for t in summary.terms}["ce"] == "0.1"  # 1 - alpha, evaluated
