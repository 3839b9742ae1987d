"""The language-model job end to end: text data, a causal teacher pre-trained and cached, the
student alone and distilled, perplexity reported (a few seconds with tiny models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdspec.cli.main import main
from kdspec.runtime import load_run
from kdspec.runtime.data import build_data

ROOT = Path(__file__).resolve().parents[2]

TINY = """
[models]
t = "zoo:lm_tiny"
s = "zoo:lm_tiny"

[model_options]
t = { width = 16, layers = 1, heads = 1 }
s = { width = 8, layers = 1, heads = 1 }

[data]
source = "jsonl:qa.jsonl"
seq_len = 24
packing = false
val_fraction = 0.2
test_fraction = 0.2
batch_size = 8

[train]
epochs = 1
optimizer = "adamw"
lr = 3e-3
metric = "perplexity"

[teacher]
epochs = 1
optimizer = "adamw"
lr = 3e-3

[params]
max_new_tokens = 4
"""


def _rows(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"(teacher t|s alone|s distilled \(\w+\))\s+zoo:lm_tiny\s+([\d.]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _setup(tmp_path, monkeypatch, n: int = 20) -> None:
    rows = [{"prompt": f"{i} plus one is", "response": f" {i + 1}."} for i in range(n)]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tiny.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSPEC_CACHE", str(tmp_path / "cache"))


def test_smoke_gkd_trains_on_text(tmp_path, monkeypatch, capsys) -> None:
    """The fast tier's smoke: a teacher pre-trained on JSONL text, then GKD (on-policy)."""
    _setup(tmp_path, monkeypatch, n=10)
    code = main(["train", str(ROOT / "specs" / "gkd.kd"), "--run", "tiny.toml", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    got = _rows(out.out)
    assert set(got) == {"teacher t", "s distilled (gkd)"}, out.out
    assert all(1 < v < 259 for v in got.values())


@pytest.mark.slow
def test_gkd_and_seqkd_train_on_text_and_report_perplexity(tmp_path, monkeypatch, capsys) -> None:
    _setup(tmp_path, monkeypatch)
    for spec in ("gkd", "seqkd"):
        code = main(
            [
                "train",
                str(ROOT / "specs" / f"{spec}.kd"),
                "--run",
                "tiny.toml",
                "--quiet",
                "--baseline",
            ]
        )
        out = capsys.readouterr()
        assert code == 0, out.err
        got = _rows(out.out)
        assert set(got) == {"teacher t", "s alone", f"s distilled ({spec})"}, out.out
        assert all(1 < v < 259 for v in got.values())  # perplexities of a 259-token vocabulary
        assert "test perplexity" in out.out


def test_the_embedded_lm_run_file_reads_the_pydoc_text() -> None:
    run = load_run(ROOT / "runs" / "tiny_lm.toml")
    data = build_data(run)
    assert data.splits.train.prompt_lengths.unique().tolist() == [run.config.data.prompt_tokens]
    assert len(data.splits.test) > 100
    assert run.config.train.metric == "perplexity"
