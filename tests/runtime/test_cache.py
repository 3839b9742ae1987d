"""The teacher cache: reuse, key changes, corrupt and stale entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdspec.runtime.cache import cache_root, get_teacher
from kdspec.runtime.data import build_data
from kdspec.runtime.runfile import TeacherConfig, parse_run
from kdspec.zoo import build_model

RUN = parse_run(
    '[data]\nsource = "synthetic"\nn = 64\nnum_classes = 4\ninput_shape = [1, 8, 8]\n'
    "batch_size = 16\n",
    "cache.toml",
)
DATA = build_data(RUN)
TEACHER = TeacherConfig(epochs=1, lr=0.05)


def _get(root: Path, logs: list[str], cfg: TeacherConfig = TEACHER, seed: int = 0, run=RUN):
    return get_teacher(
        "t",
        "zoo:cnn_tiny",
        lambda: build_model("cnn_tiny", 4, 1),
        DATA if run is RUN else build_data(run),
        run.config.data,
        cfg,
        seed,
        root,
        log=logs.append,
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_cache_root_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KDSPEC_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("KDSPEC_CACHE")
    assert cache_root().parts[-3:] == (".cache", "kdspec", "teachers")


def test_trains_once_then_reuses(tmp_path: Path) -> None:
    logs: list[str] = []
    first = _get(tmp_path, logs)
    assert not first.reused
    assert (first.path / "teacher.pt").exists()
    sidecar = json.loads((first.path / "teacher.json").read_text())
    assert sidecar["fields"]["architecture"] == "zoo:cnn_tiny"
    assert sidecar["fields"]["teacher"]["epochs"] == 1
    assert len(sidecar["sha256"]) == 64
    assert (first.path / "training" / "metrics.jsonl").exists()
    second = _get(tmp_path, logs)
    assert second.reused
    assert second.path == first.path
    assert _same(first.model, second.model)
    assert any("reusing" in m and str(first.path) in m for m in logs)


@pytest.mark.parametrize(
    "change",
    [
        {"cfg": TEACHER.model_copy(update={"lr": 0.1})},
        {"cfg": TEACHER.model_copy(update={"exclude_classes": [1]})},
        {"seed": 1},
    ],
    ids=["lr", "exclude_classes", "seed"],
)
def test_key_changes_retrain(tmp_path: Path, change: dict) -> None:
    logs: list[str] = []
    base = _get(tmp_path, logs)
    other = _get(tmp_path, logs, **change)
    assert not other.reused
    assert other.path != base.path


def test_data_changes_change_the_key(tmp_path: Path) -> None:
    logs: list[str] = []
    base = _get(tmp_path, logs)
    other = _get(tmp_path, logs, run=RUN.with_updates(data={"seed": 1}))
    assert other.path != base.path


def test_corrupt_weights_are_retrained(tmp_path: Path) -> None:
    logs: list[str] = []
    first = _get(tmp_path, logs)
    weights = first.path / "teacher.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    again = _get(tmp_path, logs)
    assert not again.reused
    assert any("sha256" in m and "retraining" in m for m in logs)
    # Same seed, same recipe: the retrained teacher is the same teacher.
    assert _same(first.model, again.model)
    assert _get(tmp_path, logs).reused


def test_stale_sidecar_is_retrained(tmp_path: Path) -> None:
    logs: list[str] = []
    first = _get(tmp_path, logs)
    sidecar = first.path / "teacher.json"
    meta = json.loads(sidecar.read_text())
    meta["fields"]["zoo_version"] = "0"
    sidecar.write_text(json.dumps(meta))
    assert not _get(tmp_path, logs).reused
    assert any("stale" in m for m in logs)
    (first.path / "teacher.json").write_text("{not json")
    assert not _get(tmp_path, logs).reused
    assert any("unreadable" in m for m in logs)
