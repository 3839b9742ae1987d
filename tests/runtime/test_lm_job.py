"""The language-model job end to end: text data, a causal teacher pre-trained and cached, the
student alone and distilled, perplexity reported (a few seconds with tiny models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kdspec.api import load_method
from kdspec.cli.main import main
from kdspec.runtime import load_models, load_run
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


def test_minilm_v2_trains_on_the_zoo_causal_lms(tmp_path, monkeypatch, capsys) -> None:
    """`specs/minilm_v2.kd` taps `stage[-1]."attention.self.query"` (and key, value): the zoo's
    causal LMs name their projections as BERT does, so the spec trains on the LM job; the
    student's last value projection learns, the parts after it (head, MLP) keep their
    initial weights."""
    _setup(tmp_path, monkeypatch)
    run = tmp_path / "tiny.toml"
    run.write_text(TINY.replace("[params]\nmax_new_tokens = 4\n", ""))
    spec = str(ROOT / "specs" / "minilm_v2.kd")
    argv = ["train", spec, "--run", "tiny.toml", "--quiet", "--param", "relation_heads=2"]
    code = main([*argv, "--out", "out"])
    out = capsys.readouterr()
    assert code == 0, out.err
    terms = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])["terms"]
    assert set(terms) == {"qq", "kk", "vv"}
    assert all(0 < v < 10 for v in terms.values()), terms
    low = load_method(spec, overrides={"relation_heads": 2})
    start = load_models(low, run).models["s"].state_dict()
    end = torch.load(tmp_path / "out" / "models" / "s.pt", weights_only=True)
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert "blocks.0.attention.self.value.weight" in moved
    assert not {k for k in moved if k.startswith(("head.", "norm.", "blocks.0.mlp."))}, moved


def test_teacher_generations_are_cached_on_disk_and_keyed(tmp_path, monkeypatch, capsys) -> None:
    """Sequence-level KD generates once: a second run reads the file beside the teacher cache
    (only the compiler's example-batch checks generate; the same result); a changed key
    (max_new_tokens, seed) generates again into a file of its own; a corrupt file is reported
    and regenerated."""
    from kdspec.zoo.lm import CausalLM

    _setup(tmp_path, monkeypatch)
    calls: list[int] = []
    real = CausalLM.generate

    def counted(self, *args, **kwargs):
        calls.append(len(kwargs["input_ids"]))  # rows generated
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CausalLM, "generate", counted)
    store = tmp_path / "cache" / "generations"

    def run(*extra: str) -> tuple[int, dict[str, float], str]:
        calls.clear()
        argv = ["train", str(ROOT / "specs" / "seqkd.kd"), "--run", "tiny.toml", *extra]
        code = main([*argv, "--param", "temperature=1"])
        out = capsys.readouterr()
        assert code == 0, out.err
        return sum(calls), _rows(out.out), out.err

    # 12 training rows; the two compiles of a run (the taps checked before the teacher is
    # trained or read, then the method's) each run the first batch (8 rows) once
    made, first, _ = run()
    assert made == 2 * 8 + 12 and len(list(store.glob("*.pt"))) == 1
    assert not list(store.glob(".*.tmp"))  # written atomically: no temporary file left
    again, second, err = run()
    assert again == 2 * 8, err
    assert second == first  # read back; the rest of the run is unchanged
    assert "teacher generations: 12 read from" in err
    assert run("--param", "max_new_tokens=3")[0] == 2 * 8 + 12
    assert run("--seed", "1")[0] == 2 * 8 + 12
    assert len(list(store.glob("*.pt"))) == 3
    for f in store.glob("*.pt"):
        f.write_bytes(b"not a torch file")
    made, third, err = run()
    assert made == 2 * 8 + 12 and third == first
    assert "generating them again" in err
