"""TensorBoard logging and user callbacks, from the command line, beside metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdspec.cli.main import main

TINY = """
[data]
source = "synthetic"
n = 96
num_classes = 4
input_shape = [1, 8, 8]
batch_size = 16

[train]
epochs = 2

[teacher]
epochs = 1
"""

RECORDER = """
EVENTS = []


class Recorder:
    def on_train_start(self, label, total_steps, done_steps):
        EVENTS.append(("start", label, total_steps))

    def on_step(self, stage, values):
        EVENTS.append(("step", stage, dict(values)))

    def on_epoch_end(self, record):
        EVENTS.append(("epoch", record["epoch"], record["lr"]))
"""


def train(tmp_path: Path, *extra: str) -> int:
    run = tmp_path / "tiny.toml"
    run.write_text(TINY)
    return main(["train", "hinton", "--run", str(run), "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra])  # fmt: skip


def test_user_callback_sees_every_step_and_epoch(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "kd_recorder.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert train(tmp_path, "--callback", "kd_recorder:Recorder") == 0
    events = sys.modules["kd_recorder"].EVENTS
    starts = [e for e in events if e[0] == "start"]
    assert [label for _, label, _ in starts][-1] == "hinton"
    total = starts[-1][2]
    steps = events[events.index(starts[-1]) + 1 :]
    assert len([e for e in steps if e[0] == "step"]) == total > 2
    assert {"loss", "kd", "ce"} <= set(steps[0][2])
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(e[1], e[2]) for e in steps if e[0] == "epoch"] == [
        (r["epoch"], r["lr"]) for r in records
    ]


def test_bad_callbacks_are_usage_errors(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "kd_not_observer.py").write_text("VALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("nocolon", "kd_missing_module_xyz:X", "kd_not_observer:NOPE",
                 "kd_not_observer:VALUE"):  # fmt: skip
        assert train(tmp_path, "--callback", spec) == 2
        assert "--callback" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tensorboard_scalars(tmp_path, capsys) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train(tmp_path, "--tensorboard", str(tmp_path / "tb")) == 0
    runs = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert "hinton" in runs
    acc = EventAccumulator(str(tmp_path / "tb" / "hinton"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/kd", "step/ce", "epoch/loss", "epoch/kd", "epoch/lr"} <= tags
    assert {"val/s/top1", "test/s/top1"} <= tags
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in acc.Scalars("step/kd")] == list(range(1, records[-1]["step"] + 1))
    got = [(e.step, e.value) for e in acc.Scalars("epoch/kd")]
    assert got == [(r["step"], pytest.approx(r["terms"]["kd"], rel=1e-6)) for r in records]
