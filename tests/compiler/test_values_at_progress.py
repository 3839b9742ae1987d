"""Every number a spec writes is used exactly, at the current point of training (issue 16).

Ensemble weights are expressions like any weight (parameters, overrides, schedules), and a
schedule works wherever a number is read at run time, e.g. a temperature that ramps up.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.api import check_source, load_method
from kdspec.compiler import Progress, compile_spec
from kdspec.diagnostics import KdError
from kdspec.source import SourceFile
from kdspec.taxonomy.identify import identify

ENSEMBLE = """method ens {
  param w1 = 0.7
  param w2 = 0.3
  teacher t1, t2
  student s
  ensemble both = weighted(t1, t2, weights=WEIGHTS)
  transfer kd: softmax(T=2) from both.logits to s.logits with kl
}"""


def _logits():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]


def _kd(text: str, progress: Progress | None = None, overrides=None) -> torch.Tensor:
    z = _logits()
    tensors = {"t1.logits": z[0], "t2.logits": z[1], "s.logits": z[2]}
    d = compile_spec(load_method("e.kd", text=text, overrides=overrides), None, tensors)
    return d(tensors, progress=progress).terms["kd"]


def _expected(w1: float, w2: float) -> torch.Tensor:
    z = _logits()
    p = (w1 * F.softmax(z[0] / 2, 1) + w2 * F.softmax(z[1] / 2, 1)) / (w1 + w2)
    return (p * (p.log() - F.log_softmax(z[2] / 2, 1))).sum() / z[2].shape[0]


def test_ensemble_weights_from_parameters_are_used_exactly():
    got = _kd(ENSEMBLE.replace("WEIGHTS", "[w1, w2]"))
    assert_close(got, _expected(0.7, 0.3))
    assert float((got - _expected(1.0, 1.0)).abs()) > 1e-3  # not the uniform mean


def test_ensemble_weights_follow_param_overrides_and_expressions():
    got = _kd(ENSEMBLE.replace("WEIGHTS", "[w1, w2]"), overrides={"w1": 0.9})
    assert_close(got, _expected(0.9, 0.3))
    got = _kd(ENSEMBLE.replace("WEIGHTS", "[2 * w1, 1 - w1]"))
    assert_close(got, _expected(1.4, 0.3))
    text = ENSEMBLE.replace("param w2 = 0.3", "param ws = [0.2, 0.6]").replace("WEIGHTS", "ws")
    assert_close(_kd(text.replace("param w1 = 0.7\n", "")), _expected(0.2, 0.6))


def test_ensemble_weights_with_a_schedule_change_during_training():
    text = ENSEMBLE.replace("WEIGHTS", "[anneal(start=1, end=0), ramp(start=0, end=1)]")
    text = text.replace("  param w1 = 0.7\n  param w2 = 0.3\n", "")
    for epoch, (w1, w2) in ((0, (1.0, 0.0)), (5, (0.5, 0.5)), (7.5, (0.25, 0.75))):
        got = _kd(text, Progress(epoch=epoch, stage_epochs=10))
        assert_close(got, _expected(w1, w2))


def _diags(text: str) -> list[str]:
    _, diags = check_source(SourceFile("e.kd", text))
    return [f"{d.code} {d.message}" for d in diags if d.severity.name == "ERROR"]


@pytest.mark.parametrize(
    ("weights", "wanted"),
    [
        ("[1, -1]", "must be >= 0"),
        ("[2, -1]", "must be >= 0"),
        ("[0, 0]", "sum to zero"),
        ("[w1, anneal(start=0.3, end=-1)]", "must be >= 0"),
        ("[1]", "1 weights for 2 members"),
        ("w1", "must be a list of numbers"),
        ('["a", 1]', "must be a list of numbers"),
    ],
)
def test_bad_ensemble_weights_are_located_diagnostics(weights: str, wanted: str):
    text = ENSEMBLE.replace("WEIGHTS", weights)
    errors = _diags(text)
    assert any(wanted in e for e in errors), errors
    with pytest.raises(KdError):
        load_method("e.kd", text=text)


def test_weighted_mean_in_an_expression_is_checked_like_an_ensemble():
    text = """method m {
  teacher t1, t2
  student s
  transfer kd: softmax(T=2) from mean(t1.logits, t2.logits, weights=[1, -2]) to s.logits with kl
}"""
    assert any("must be >= 0" in e for e in _diags(text))


HINTON_RAMP = """method rampt {
  teacher t
  student s
  transfer kd: softmax(T=TEMP) from t.logits to s.logits with kl
}"""


def _hinton(temp: str, progress: Progress | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    tensors = {f"{r}.logits": torch.randn(6, 5, generator=g, dtype=torch.float64) for r in "ts"}
    d = compile_spec(load_method("h.kd", text=HINTON_RAMP.replace("TEMP", temp)), None, tensors)
    return d(tensors, progress=progress).terms["kd"]


@pytest.mark.parametrize(("epoch", "temp"), [(0.0, 1.0), (2.0, 2.4), (5.0, 4.5), (10.0, 8.0)])
def test_a_temperature_ramp_is_evaluated_at_every_step(epoch: float, temp: float):
    got = _hinton("ramp(start=1, end=8)", Progress(epoch=epoch, stage_epochs=10))
    assert_close(got, _hinton(str(temp), None))


def test_a_schedule_held_in_a_parameter_is_still_a_schedule():
    text = HINTON_RAMP.replace("TEMP", "4").replace("with kl", "with kl weight a")
    text = text.replace("teacher t", "param a = ramp(start=0, end=2)\n  teacher t")
    g = torch.Generator().manual_seed(3)
    tensors = {f"{r}.logits": torch.randn(6, 5, generator=g, dtype=torch.float64) for r in "ts"}
    d = compile_spec(load_method("h.kd", text=text), None, tensors)
    half = d(tensors, progress=Progress(epoch=5, stage_epochs=10)).terms["kd"]
    full = d(tensors, progress=Progress(epoch=10, stage_epochs=10)).terms["kd"]
    assert_close(2 * half, full)


def test_identify_shows_a_schedule_not_its_maximum():
    text = HINTON_RAMP.replace("TEMP", "ramp(start=1, end=8)")
    text = text.replace("with kl\n", "with kl\n  supervise ce: s.logits with cross_entropy\n")
    low = load_method("h.kd", text=text)
    text = identify(low).render()
    assert "ramp(start=1, end=8)" in text
    assert "-> 8\n" not in text + "\n"


def test_a_schedule_where_a_constant_is_needed_is_a_diagnostic():
    adapter = HINTON_RAMP.replace("TEMP", "4").replace(
        "to s.logits with kl", "to linear(s.logits, dim=ramp(start=2, end=8)) with kl"
    )
    assert any("cannot follow a schedule" in e for e in _diags(adapter))
    stage = HINTON_RAMP.replace("TEMP", "4").replace(
        "with kl\n", "with kl\n  stage a for ramp(start=1, end=3) epochs { train s }\n"
    )
    assert any("cannot follow a schedule" in e for e in _diags(stage))
