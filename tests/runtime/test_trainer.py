"""The training loop: stage budgets, schedules, determinism, resume, files, KD503."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tolerance import assert_close
from torch import nn

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.data import synthetic_splits
from kdspec.diagnostics import KdError
from kdspec.runtime.runfile import TrainConfig
from kdspec.runtime.supervised import Plan, Supervised
from kdspec.runtime.trainer import lr_factor, plan_stages, train
from kdspec.zoo import build_model

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

TWO_STAGES = """
method two {
  param T = 2
  teacher t
  student s
  transfer kd: softmax(T) from t.logits to s.logits with kl weight T^2
  supervise ce: s.logits with cross_entropy
  stage warm for 1 epochs {
    losses ce
  }
  stage main {
    losses kd, ce
  }
}
"""

SPLITS = synthetic_splits(n=96, num_classes=4, input_shape=(1, 8, 8), seed=0)
CFG = TrainConfig(epochs=3, lr=0.05, schedule="cosine")


def _distiller(spec: str) -> Any:
    low = load_method("two", text=TWO_STAGES) if spec == "two" else load_method(spec)
    torch.manual_seed(1)
    models = {r.name: build_model("cnn_tiny", 4, 1) for r in low.method.roles if r.mode != "ema"}
    batch = tuple(torch.utils.data.default_collate([SPLITS.train[i] for i in range(8)]))
    torch.manual_seed(2)
    return compile_spec(low, models, batch, num_classes=4, train_data=SPLITS.train)


def _train(model: Any, out: Path, cfg: TrainConfig = CFG, **kw: Any) -> Any:
    return train(
        model,
        SPLITS.train,
        cfg,
        out,
        batch_size=16,
        val_set=SPLITS.val,
        test_set=SPLITS.test,
        **kw,
    )


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


# -- budgets and schedules ----------------------------------------------------------------------


def test_plan_stages_budget_rules() -> None:
    plans = [Plan("a", 0.25, "fraction"), Plan("b", 2.0, "epochs"), Plan("c", None, None, 2)]
    runs = plan_stages(plans, total_epochs=10, steps_per_epoch=4)
    assert [(r.name, r.steps, r.repeat) for r in runs] == [("a", 10, 1), ("b", 8, 1), ("c", 11, 2)]
    (only,) = plan_stages([Plan("x", 3, "steps")], total_epochs=5, steps_per_epoch=4)
    assert only.steps == 3
    (rest,) = plan_stages([Plan()], total_epochs=5, steps_per_epoch=4)
    assert rest.steps == 20


def test_lr_schedules() -> None:
    step = TrainConfig(epochs=240, schedule="step", milestones=[150, 180, 210])
    assert lr_factor(step, 149 * 10, 2400, 10) == 1.0
    assert lr_factor(step, 150 * 10, 2400, 10) == pytest.approx(0.1)
    # A stage half as long as the run gets its milestones halved.
    assert lr_factor(step, 75 * 10, 1200, 10) == pytest.approx(0.1)
    cos = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cos, 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(cos, 10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 99, 100, 10) < 0.01
    assert lr_factor(TrainConfig(schedule="none"), 50, 100, 10) == 1.0


# -- the loop -----------------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    a = _train(_distiller("hinton"), tmp_path / "a")
    b = _train(_distiller("hinton"), tmp_path / "b")
    assert _strip(a.records) == _strip(b.records)
    assert len(a.records) == 3
    assert {"kd", "ce"} <= set(a.records[0]["terms"])
    c = _train(_distiller("hinton"), tmp_path / "c", cfg=CFG.model_copy(update={"seed": 1}))
    assert _strip(c.records) != _strip(a.records)


class _StopAfter:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.seen = 0

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.seen += 1
        if self.seen == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.parametrize("spec", ["two", "mean_teacher"])
def test_resume_matches_an_uninterrupted_run(tmp_path: Path, spec: str) -> None:
    full = _train(_distiller(spec), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _train(_distiller(spec), tmp_path / "cut", callbacks=[_StopAfter(2)])
    # A crash after the metrics line but before the checkpoint must not duplicate epochs.
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = _train(_distiller(spec), tmp_path / "cut", resume=True)
    assert _strip(resumed.records) == _strip(full.records)
    for k, v in full.model.state_dict().items():
        assert_close(resumed.model.state_dict()[k], v)


def test_resume_refuses_another_jobs_checkpoint(tmp_path: Path) -> None:
    _train(_distiller("hinton"), tmp_path / "run", cfg=CFG.model_copy(update={"epochs": 1}))
    with pytest.raises(KdError) as info:
        _train(_distiller("hinton"), tmp_path / "run", resume=True)
    assert info.value.diagnostics[0].code == "KD501"


def test_output_files_exist_and_parse(tmp_path: Path) -> None:
    result = _train(_distiller("two"), tmp_path, cfg=CFG.model_copy(update={"eval": "best_val"}))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["stage"] for r in records] == ["warm", "main", "main"]
    assert set(records[0]["terms"]) == {"ce"}
    assert set(records[-1]["terms"]) == {"kd", "ce"}
    assert {"val", "test", "lr", "loss", "epoch"} <= set(records[-1])
    assert 0 <= records[-1]["test"]["s"]["top1"] <= 100
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["eval_protocol"]["report"] == "best_val"
    assert summary["best_val"]["s"]["test"]["top1"] == summary["reported_test_top1"]["s"]
    assert {"python", "torch", "kdspec"} <= set(summary["versions"])
    assert summary["seed"] == CFG.seed
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "models" / "s.pt").exists()
    assert result.summary == summary


class _Exploding(nn.Module):
    """Finite for the first ``good`` training forwards, NaN afterwards."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.net = build_model("cnn_tiny", 4, 1)
        self.good = good
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.good:
                return out * float("nan")
        return out


def test_non_finite_loss_stops_cleanly(tmp_path: Path) -> None:
    steps_per_epoch = -(-len(SPLITS.train) // 16)
    with pytest.raises(KdError) as info:
        _train(Supervised(_Exploding(steps_per_epoch + 1), "s"), tmp_path)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD503"
    assert "`ce`" in diag.message
    assert "epoch 2" in diag.message
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert (tmp_path / "checkpoint.pt").exists()


def test_fixed_stages_longer_than_the_run_are_kd207() -> None:
    from kdspec.diagnostics import KdError
    from kdspec.runtime.supervised import Plan
    from kdspec.runtime.trainer import plan_stages

    with pytest.raises(KdError) as info:
        plan_stages([Plan("init", 30, "epochs"), Plan("task")], 20, 10)
    assert info.value.diagnostics[0].code == "KD207"
    assert [s.steps for s in plan_stages([Plan("init", 3, "epochs"), Plan("task")], 20, 10)] == [
        30,
        170,
    ]
