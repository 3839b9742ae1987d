"""`[train] metric`: what train, compare and the summary report, computed as defined."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdspec.cli.main import main
from kdspec.runtime.metrics import METRICS
from kdspec.runtime.trainer import _update_best, evaluate_model

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out


def test_every_metric_matches_its_definition_in_float64() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(37, 6), torch.randint(0, 7, (37,))
    model, teacher = nn.Linear(6, 7), nn.Linear(6, 7)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    got = evaluate_model(model, loader, torch.device("cpu"), reference=teacher)
    with torch.no_grad():
        logits, ref = model.double()(x.double()), teacher.double()(x.double())
    model.float(), teacher.float()
    top5 = logits.topk(5, 1).indices
    expected = {
        "top1": 100.0 * float((logits.argmax(1) == y).double().mean()),
        "top5": 100.0 * float((top5 == y[:, None]).any(1).double().mean()),
        "perplexity": math.exp(float(nn.functional.cross_entropy(logits, y))),
        "teacher_cosine": float(nn.functional.cosine_similarity(logits, ref, dim=1).mean()),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
    assert got["top5"] >= got["top1"]
    assert "teacher_cosine" not in evaluate_model(model, loader, torch.device("cpu"))


def test_best_validation_epoch_follows_the_metrics_direction() -> None:
    records = [
        {"epoch": 1, "val": {"s": {"top1": 50.0, "perplexity": 3.0}}, "test": {"s": None}},
        {"epoch": 2, "val": {"s": {"top1": 40.0, "perplexity": 2.0}}, "test": {"s": None}},
    ]
    for metric, epoch in (("top1", 1), ("perplexity", 2)):
        best: dict = {}
        for r in records:
            _update_best(best, r, ["s"], metric)
        assert best["s"]["epoch"] == epoch, metric
    assert not METRICS["perplexity"].higher_is_better


TINY = """
[data]
source = "synthetic"
n = 96
num_classes = 6
input_shape = [1, 8, 8]
batch_size = 16
[train]
epochs = 2
metric = "{metric}"
[teacher]
epochs = 1
"""


def _files(tmp_path: Path, metric: str) -> list[str]:
    run = tmp_path / f"{metric}.toml"
    run.write_text(TINY.format(metric=metric))
    return ["--run", str(run), "--cache-dir", str(tmp_path / "cache"), "--quiet"]


@pytest.mark.parametrize("metric", ["top5", "teacher_cosine"])
def test_train_reports_the_named_metric(capsys, tmp_path, metric) -> None:
    out_dir = tmp_path / metric
    argv = ["train", "hinton", *_files(tmp_path, metric), "--out", str(out_dir), "--baseline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    label = METRICS[metric].label
    assert f"test {label}" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["metric"]["name"] == metric
    value = summary["reported_test"]["s"]
    assert value == summary["final"]["s"]["test"][metric]
    assert f"{value:.4f}" in out if metric == "teacher_cosine" else f"{value:.2f}" in out
    assert metric in summary["eval_protocol"]["description"] or label in out
    if metric == "teacher_cosine":
        assert -1.0 <= value <= 1.0
    baseline = json.loads((out_dir / "baseline" / "summary.json").read_text())
    assert baseline["reported_test"]["s"] == baseline["final"]["s"]["test"][metric]


def test_compare_tables_and_plots_the_named_metric(capsys, tmp_path) -> None:
    out_dir = tmp_path / "cmp"
    argv = ["compare", "hinton", "--seeds", "2", *_files(tmp_path, "perplexity")]
    assert main([*argv, "--out", str(out_dir)]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["metric"]["name"] == "perplexity"
    for row in results["rows"]:
        cells = [c for c in results["cells"] if c["method"] == row["method"]]
        assert row["per_seed"] == [c["final"]["test"]["perplexity"] for c in cells]
        assert all(x > 1.0 for x in row["per_seed"])
    assert "test perplexity mean ± std" in (out_dir / "results.md").read_text()
    assert (out_dir / "compare.png").stat().st_size > 0


def test_teacher_cosine_needs_a_teacher(capsys, tmp_path) -> None:
    argv = ["train", "cskd", *_files(tmp_path, "teacher_cosine"), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error[KD501]" in err and "has none" in err and "teacher_cosine.toml:10:1" in err
