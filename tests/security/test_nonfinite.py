"""Issue 13: a non-finite loss names its term, spec line, step and last good checkpoint;
`--on-nonfinite skip` skips and counts such batches; tiny temperatures are warned about."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdspec.cli.main import main

NAN_MODEL = """
import torch
from kdspec.zoo import build_model


class Exploding(torch.nn.Module):
    def __init__(self, num_classes, in_channels, good):
        super().__init__()
        self.net = build_model("cnn_tiny", num_classes, in_channels)
        self.good = good
        self.calls = 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.good and self.calls % 2:
                return out * float("nan")
        return out


def make(num_classes, in_channels):
    return Exploding(num_classes, in_channels, good=5)
"""

RUN = """[models]
t = "zoo:cnn_tiny"
s = "import:nanmodel:make"
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

SPEC = """method boom {
  teacher t
  student s
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  supervise ce: s.logits with cross_entropy
}
"""


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    (tmp_path / "nanmodel.py").write_text(NAN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "r.toml").write_text(RUN)
    (tmp_path / "boom.kd").write_text(SPEC)
    return [
        "train", str(tmp_path / "boom.kd"), "--run", str(tmp_path / "r.toml"), "--quiet",
        "--allow-import", "nanmodel", "--out", str(tmp_path / "out"),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip


def test_kd503_names_the_term_its_line_the_step_and_the_checkpoint(capsys, job) -> None:  # type: ignore[no-untyped-def]
    assert main(job) == 1
    err = capsys.readouterr().err
    assert "error[KD503]" in err
    assert "boom.kd:4:" in err  # the line of the first term whose value is not finite
    # The step is named; which one depends on how many training-mode forwards the checks before
    # training make (the model turns non-finite on its 7th).
    assert re.search(r"epoch \d+, step \d+", err)
    assert "checkpoint" in err


def test_on_nonfinite_skip_skips_and_counts(capsys, job, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert main([*job, "--on-nonfinite", "skip"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_nonfinite"] > 0
    assert f"skipped {summary['skipped_nonfinite']} batches" in out


TINY_T = """method tiny {
  teacher t
  student s
  transfer softmax(T=1e-9) from t.logits to s.logits with kl
}
"""


def test_a_tiny_temperature_is_a_check_warning() -> None:
    from kdspec.api import check_source
    from kdspec.diagnostics import Severity
    from kdspec.source import SourceFile

    _, diags = check_source(SourceFile("x.kd", TINY_T))
    assert [(d.code, d.severity) for d in diags] == [("KD205", Severity.WARNING)]


def test_a_diverging_loss_is_warned_once_while_training(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "tiny.kd").write_text(TINY_T)
    (tmp_path / "r.toml").write_text(RUN.split("[data]", 1)[1].join(["[data]", ""]))
    code = main(
        ["train", str(tmp_path / "tiny.kd"), "--run", str(tmp_path / "r.toml"), "--quiet",
         "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("the objective is diverging") == 1
