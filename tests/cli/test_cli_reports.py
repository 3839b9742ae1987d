"""What `train` and `compare` tell the user: which cell runs, how much a few seeds say, and a
student-alone row for every method."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdspec.cli.main import main
from kdspec.runtime.compare import small_sample_warnings
from kdspec.runtime.stats import paired_difference

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

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


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_compare_names_each_cell_and_warns_about_few_seeds(capsys, tmp_path, tiny) -> None:
    argv = ["compare", "hinton", "--seeds", "2", "--run", str(tiny)]
    argv += ["--out", str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # Per-epoch lines say which cell (method, seed, k/N) is running.
    for cell in ("baseline seed 0 (1/4)", "hinton seed 0 (2/4)", "hinton seed 1 (4/4)"):
        assert f"[{cell}] epoch 1" in err
    assert "warning: only 2 seeds" in err
    assert "> warning: only 2 seeds: the 95% interval uses t(1) = 12.71" in out


def test_no_zero_width_interval_when_every_seed_agrees() -> None:
    same = paired_difference([91.0, 92.0, 93.0], [90.0, 91.0, 92.0])
    assert same["mean"] == pytest.approx(1.0)
    assert same["low"] is None and same["high"] is None and same["p"] is None
    rows = [{"method": "kd", "vs_baseline": same}]
    (few, flat) = small_sample_warnings(rows, 3)
    assert "only 3 seeds" in few and "no spread" in flat
    spread = paired_difference([91.0, 92.5, 93.0, 95.0, 94.0], [90.0, 91.0, 92.0, 92.0, 92.5])
    assert spread["low"] < spread["mean"] < spread["high"]
    assert small_sample_warnings([{"method": "kd", "vs_baseline": spread}], 5) == []


def test_train_shows_a_student_alone_row_for_a_multi_teacher_spec(capsys, tmp_path, tiny) -> None:
    argv = ["train", "multi_teacher", "--run", str(tiny), "--quiet"]
    argv += ["--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "s alone" in out and "not trained (--baseline)" in out
    assert main([*argv, "--baseline", "--out", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    alone = next(line for line in out.splitlines() if line.startswith("s alone"))
    distilled = next(line for line in out.splitlines() if line.startswith("s distilled"))
    assert "not trained" not in alone
    assert distilled.split()[-1].startswith(("+", "-"))  # the difference to the student alone
