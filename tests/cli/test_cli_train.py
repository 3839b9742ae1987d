"""``kdspec train``, ``compare``, ``taps`` and ``reproduce`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdspec.cli.main import main

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[2]

# Tiny synthetic data and a one-epoch teacher: every command finishes in seconds.
TINY = """
[data]
source = "synthetic"
n = 96
num_classes = 4
input_shape = [1, 8, 8]
batch_size = 16
{data}

[train]
epochs = 2

[teacher]
epochs = 1
"""

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
            if self.calls > self.good:
                return out * float("nan")
        return out


def make(num_classes, in_channels):
    return Exploding(num_classes, in_channels, good=4)
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(data=""))
    return path


def _train(capsys, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    return run(
        capsys,
        "train",
        "hinton",
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        *extra,
    )


def test_train_prints_the_table_and_writes_files(capsys, tmp_path: Path, tiny: Path) -> None:
    code, out, err = _train(capsys, tmp_path, "--run", str(tiny), "--baseline")
    assert code == 0, err
    assert "teacher t" in out
    assert "s alone" in out
    assert "s distilled (hinton)" in out
    assert "curves: " in out
    run_dir = tmp_path / "out"
    for name in ("metrics.jsonl", "summary.json", "curves.png", "baseline/summary.json"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "hinton"
    assert summary["spec"]["name"] == "hinton"
    assert summary["run"]["train"]["epochs"] == 2
    assert summary["teachers"]["t"]["cache"].startswith(str(tmp_path / "cache"))
    base = json.loads((run_dir / "baseline" / "summary.json").read_text())
    # The baseline sees exactly the distillation's data, budget and seed.
    assert base["stages"] == summary["stages"]
    assert base["seed"] == summary["seed"]


def test_train_resume_of_a_finished_run_recomputes_nothing(
    capsys, tmp_path: Path, tiny: Path
) -> None:
    code, out, _ = _train(capsys, tmp_path, "--run", str(tiny))
    assert code == 0
    before = (tmp_path / "out" / "metrics.jsonl").read_text()
    code, again, _ = _train(capsys, tmp_path, "--run", str(tiny), "--resume")
    assert code == 0
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == before
    assert again.splitlines()[:5] == out.splitlines()[:5]


def test_default_digits_job(capsys, tmp_path: Path, teacher_cache: Path) -> None:
    # The defaults (digits, zoo teacher and student, baseline) with a 2-epoch teacher instead
    # of 20: the job's shape is under test, not the teacher's accuracy. The teacher lands in
    # the run's shared cache, so it is trained once per test run.
    short = tmp_path / "short.toml"
    short.write_text("[teacher]\nepochs = 2\n")
    out_dir = str(tmp_path / "out")
    code, out, err = run(
        capsys, "train", "hinton", "--run", str(short), "--out", out_dir, "--quiet", "--epochs", "1"
    )
    assert code == 0, err
    assert "hinton on digits" in out
    assert "zoo:cnn_small" in out
    assert "zoo:cnn_tiny" in out
    assert "s alone" in out
    assert any(teacher_cache.glob("zoo_cnn_small-*/teacher.pt"))


def test_simkd_is_scored_by_its_prediction_on_the_digits_default(
    capsys, tmp_path: Path, teacher_cache: Path
) -> None:
    # SimKD's student predicts with the teacher's classifier on its projected feature
    # (`predict s = ...`); its own classifier is never trained, so scoring the bare student
    # would give chance (10%). Evaluation and the saved files follow the `predict`.
    short = tmp_path / "short.toml"
    short.write_text("[teacher]\nepochs = 2\n")
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys, "train", "simkd", "--run", str(short), "--out", str(out_dir), "--quiet",
        "--epochs", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "simkd on digits" in out
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["test"]["s"]["top1"] for r in records]
    assert accuracy[-1] > 20.0 and accuracy[-1] > accuracy[0], accuracy
    saved = torch.load(out_dir / "models" / "s.predict.pt", weights_only=True)
    assert sum(v.dim() == 4 for v in saved.values()) == 3  # the projector's three convolutions


def test_bad_run_file_is_a_diagnostic(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 2\nlearning_rate = 0.1\n")
    code, _, err = _train(capsys, tmp_path, "--run", str(bad))
    assert code == 1
    assert "error[KD501]" in err
    assert "bad.toml:3:1" in err
    assert "Traceback" not in err


def test_unbound_role_is_kd408(capsys, tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[models]\nt = "zoo:cnn_tiny"\n')
    code, _, err = _train(capsys, tmp_path, "--run", str(path))
    assert code == 1
    assert "error[KD408]" in err
    assert "`s`" in err


def test_teacher_without_weights_when_pretraining_is_off_is_kd407(capsys, tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[models]\nt = "zoo:cnn_tiny"\ns = "zoo:cnn_tiny"\n[teacher]\npretrain = false\n'
    )
    code, _, err = _train(capsys, tmp_path, "--run", str(path))
    assert code == 1
    assert "error[KD407]" in err and "r.toml:5:1" in err
    assert "Traceback" not in err


def test_non_finite_loss_exits_1_and_keeps_files(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nanmodel.py").write_text(NAN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "nan.toml"
    path.write_text(
        '[models]\nt = "zoo:cnn_tiny"\ns = "import:nanmodel:make"\n' + TINY.format(data="")
    )
    code, _, err = _train(capsys, tmp_path, "--run", str(path), "--allow-import", "nanmodel")
    assert code == 1
    assert "error[KD503]" in err
    assert "non-finite loss" in err
    out = tmp_path / "out"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_compare_is_resumable(capsys, tmp_path: Path, tiny: Path) -> None:
    args = (
        "compare",
        "hinton",
        str(ROOT / "specs" / "rkd.kd"),
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--run",
        str(tiny),
        "--out",
        str(tmp_path / "cmp"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    )
    code, _, err = run(capsys, *args)
    assert code == 0, err
    cmp = tmp_path / "cmp"
    assert sorted(p.name for p in (cmp / "cells").iterdir()) == [
        f"{m}-seed{s}.json" for m in ("baseline", "hinton", "rkd") for s in (0, 1)
    ]
    results = json.loads((cmp / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["baseline", "hinton", "rkd"]
    assert results["rows"][1]["vs_baseline"]["n"] == 2
    assert "95% CI" in (cmp / "results.md").read_text()
    assert (cmp / "compare.png").read_bytes()[:4] == b"\x89PNG"
    code, _, _ = run(capsys, *args[:-1])  # not quiet: reports the reused cells
    assert code == 0
    assert json.loads((cmp / "results.json").read_text())["rows"] == results["rows"]


def test_compare_rejects_a_parameter_no_method_has(capsys, tmp_path: Path, tiny: Path) -> None:
    code, _, err = run(
        capsys,
        "compare",
        "hinton",
        "--param",
        "Tau=3",
        "--run",
        str(tiny),
        "--out",
        str(tmp_path / "c"),
        "--quiet",
    )
    assert code == 1
    assert "KD209" in err


def test_taps_lists_tap_points(capsys) -> None:
    code, out, _ = run(capsys, "taps", "zoo:cnn_small", "--input-shape", "1,8,8")
    assert code == 0
    assert "stage[3]" in out
    assert "embedding" in out
    assert "stage2.conv1" in out
    code, out, _ = run(capsys, "taps", "resnet8", "--format", "json", "--no-modules")
    assert json.loads(out)["taps"][-1] == {"tap": "logits", "module": "fc", "shape": "[10]"}


def test_taps_unknown_model_and_bad_shape(capsys) -> None:
    code, _, err = run(capsys, "taps", "resnet9")
    assert code == 1
    assert "KD404" in err
    code, _, err = run(capsys, "taps", "resnet8", "--input-shape", "a,b")
    assert code == 2


def test_reproduce_omitted_digit_small(capsys, tmp_path: Path) -> None:
    path = tmp_path / "om.toml"
    path.write_text(TINY.format(data="exclude_classes = [3]"))
    code, out, err = run(
        capsys,
        "reproduce",
        "omitted-digit",
        "--run",
        str(path),
        "--seeds",
        "2",
        "--temperatures",
        "2,4",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "om"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    )
    assert code == 0, err
    assert "hard labels only" in out
    assert "test 3s correct" in out
    results = json.loads((tmp_path / "om" / "results.json").read_text())
    assert results["chosen_T"] in (2.0, 4.0)
    assert len(results["cells"]) == 2 * 2 + 2
    assert "kdspec reproduce omitted-digit" in results["command"]


def test_unavailable_device_is_a_usage_error(capsys, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = _train(capsys, tmp_path, "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err and "Traceback" not in err


def test_resume_from_a_corrupt_checkpoint_is_kd405_and_keeps_the_file(
    capsys, tmp_path: Path, tiny: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_text("garbage")
    code, _, err = _train(capsys, tmp_path, "--run", str(tiny), "--resume", "--no-baseline")
    assert code == 1 and "error[KD405]" in err and "corrupt" in err
    assert "Traceback" not in err
    assert (out / "checkpoint.pt").read_text() == "garbage"
