"""``kdspec init``: a starter spec and run file for the user's own models and data, that train."""

from __future__ import annotations

import tomllib
from pathlib import Path

from kdspec.cli.main import main

MODELS = """
import torch
from torch import nn


def big(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def small(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
"""

DATA = """
import torch
from torch.utils.data import Dataset


class Blobs(Dataset):
    def __init__(self, split, n=60):
        g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
        self.targets = torch.arange(n) % 3
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.x[:, 0, 0, :3] += 3 * torch.nn.functional.one_hot(self.targets, 3)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])
"""


def test_init_writes_a_spec_and_run_that_train(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "kdi_models.py").write_text(MODELS)
    (tmp_path / "kdi_data.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["init", "mykd", "--teacher", "kdi_models:big", "--student", "kdi_models:small",
                 "--data", "kdi_data:Blobs"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "kdspec train mykd.kd --run mykd.toml --allow-import kdi_data,kdi_models" in out
    spec = (tmp_path / "mykd.kd").read_text()
    assert "method mykd " in spec and "transfer kd: softmax(T)" in spec
    run = tomllib.loads((tmp_path / "mykd.toml").read_text())
    assert run["models"] == {"t": "import:kdi_models:big", "s": "import:kdi_models:small"}
    assert run["data"]["source"] == "import:kdi_data:Blobs"
    assert main(["check", "mykd.kd"]) == 0
    code = main(["train", "mykd.kd", "--run", "mykd.toml", "--allow-import", "kdi_models,kdi_data",
                 "--epochs", "1", "--quiet", "--out", "out", "--cache-dir", "cache"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "metrics.jsonl").is_file()


def test_init_defaults_and_refusals(tmp_path: Path, capsys) -> None:
    assert main(["init", "starter", "--method", "fitnets", "--out-dir", str(tmp_path)]) == 0
    run = tomllib.loads((tmp_path / "starter.toml").read_text())
    assert run["models"] == {"t": "zoo:cnn_small", "s": "zoo:cnn_tiny"}
    assert run["data"]["source"] == "digits"
    assert "stage hints" in (tmp_path / "starter.kd").read_text()
    (tmp_path / "starter.kd").write_text("mine")
    assert main(["init", "starter", "--out-dir", str(tmp_path)]) == 2
    assert (tmp_path / "starter.kd").read_text() == "mine"
    assert main(["init", "x", "--method", "nope", "--out-dir", str(tmp_path)]) == 2
    assert main(["init", "x", "--teacher", "not a ref", "--out-dir", str(tmp_path)]) == 2
    assert main(["init", "1bad", "--out-dir", str(tmp_path)]) == 2
    assert "no library method `nope`" in capsys.readouterr().err
