"""Text sources: JSONL and pydoc text, tokenised, padded or packed, split by document."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdspec.data.text import (
    IGNORE,
    ByteTokenizer,
    Example,
    TextDataError,
    pydoc_examples,
    read_jsonl,
    split_examples,
    tokenize,
)
from kdspec.diagnostics import KdError
from kdspec.runtime import parse_run
from kdspec.runtime.data import build_data, train_loader
from kdspec.runtime.metrics import evaluate_logits
from kdspec.runtime.supervised import Supervised
from kdspec.runtime.trainer import _to

TOK = ByteTokenizer()


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_byte_tokenizer_round_trips_utf8_and_skips_special_ids() -> None:
    ids = TOK.encode("héllo")
    assert ids == list("héllo".encode())
    assert TOK.decode([TOK.bos_token_id, *ids, TOK.eos_token_id, TOK.pad_token_id]) == "héllo"


def test_padded_rows_label_the_response_only() -> None:
    ds = tokenize([Example("ab", "cd")], TOK, seq_len=8, packing=False)
    ids, mask, labels = ds.input_ids[0], ds.attention_mask[0], ds.labels[0]
    a, b, c, d = (ord(ch) for ch in "abcd")
    bos, eos, pad = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id
    assert ids.tolist() == [bos, a, b, c, d, eos, pad, pad]
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    # Hugging Face labels (unshifted): the response tokens and the eos only
    assert labels.tolist() == [IGNORE, IGNORE, IGNORE, c, d, eos, IGNORE, IGNORE]
    assert ds.prompt_lengths.tolist() == [3]  # bos + "ab"


def test_padded_rows_truncate_and_drop_examples_without_targets() -> None:
    ds = tokenize([Example("x" * 10, "y"), Example("", "abcdef")], TOK, seq_len=4, packing=False)
    assert len(ds) == 1  # the long prompt leaves no response token in 4 positions
    assert ds.labels[0].tolist() == [IGNORE, *(ord(c) for c in "abc")]
    with pytest.raises(TextDataError, match="no example has a response token"):
        tokenize([Example("x" * 10, "y")], TOK, seq_len=4, packing=False)


def test_packed_rows_cut_the_stream_and_label_each_token_once() -> None:
    examples = [Example("", "hello"), Example("p", "world!")]
    ds = tokenize(examples, TOK, seq_len=4, packing=True)
    stream = [TOK.bos_token_id, *b"hello", TOK.eos_token_id, TOK.bos_token_id, *b"pworld!"]
    stream.append(TOK.eos_token_id)
    assert ds.input_ids.flatten().tolist() == stream  # 16 tokens: 4 full rows
    targets = [t for row in ds.labels.tolist() for t in row if t != IGNORE]
    # not bos, not the prompt "p", not a row's first token (nothing before it predicts it)
    expected = [t for k, t in enumerate(stream) if k not in (0, 7, 8) and k % 4]
    assert targets == expected
    assert ds.prompt_lengths is None


def test_split_is_by_whole_documents_and_seeded() -> None:
    examples = [Example("", str(i)) for i in range(20)]
    train, val, test = split_examples(examples, 0.1, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (14, 2, 4)
    assert {e.response for e in train + val + test} == {str(i) for i in range(20)}
    assert split_examples(examples, 0.1, 0.2, seed=0) == (train, val, test)
    assert split_examples(examples, 0.1, 0.2, seed=1) != (train, val, test)
    with pytest.raises(TextDataError, match="cannot give a validation and a test split"):
        split_examples(examples[:2], 0.1, 0.2, seed=0)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('{"prompt": "a"}', "`response` must be a string"),
        ('{"text": 3}', "`text` must be a string"),
        ('{"text": "a", "prompt": "b"}', "not both"),
        ("{oops", "not JSON"),
    ],
)
def test_bad_jsonl_lines_are_located(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n\n' + row + "\n", encoding="utf-8")
    with pytest.raises(TextDataError, match=message) as exc:
        read_jsonl(path)
    assert f"{path}:3" in str(exc.value)


def test_jsonl_reads_text_and_prompt_response(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"prompt": "q", "response": "r"}])
    assert read_jsonl(path) == [Example("", "a"), Example("q", "r")]


def test_pydoc_text_ships_with_python() -> None:
    examples = pydoc_examples()
    assert len(examples) > 50
    assert sum(len(e.response) for e in examples) > 100_000
    assert all(e.prompt == "" for e in examples)


def _run(tmp_path: Path, data: str) -> object:
    return parse_run(f"[data]\n{data}\n", "run.toml", base_dir=tmp_path)


def test_a_jsonl_run_file_builds_token_splits(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}:", "response": "answer " * (i % 3 + 1)} for i in range(30)]
    _jsonl(tmp_path / "qa.jsonl", rows)
    run = _run(tmp_path, 'source = "jsonl:qa.jsonl"\nseq_len = 16\npacking = false')
    data = build_data(run)
    assert data.num_classes == TOK.vocab_size
    assert data.splits.input_shape == (16,)
    assert (len(data.splits.train), len(data.splits.val), len(data.splits.test)) == (20, 4, 6)
    x, labels, _ = next(iter(train_loader(data.transfer, 4, seed=0)))
    assert set(x) == {"input_ids", "attention_mask"}
    assert x["input_ids"].shape == labels.shape == (4, 16)
    # no loss on the prompt: the first target of each row is the response's first byte
    for row in labels.tolist():
        assert next(t for t in row if t != IGNORE) == ord("a")
    assert data.fingerprint["tokenizer"] == "byte"


def test_the_pydoc_source_packs_by_default(tmp_path: Path) -> None:
    data = build_data(_run(tmp_path, 'source = "pydoc"\nseq_len = 32'))
    train = data.splits.train
    assert len(train) > 5000
    full = train.attention_mask[:-1].bool()
    assert bool(full.all())  # packed: only the last row has padding
    unlabelled = train.labels[:-1, 1:] == IGNORE
    assert torch.equal(unlabelled, train.input_ids[:-1, 1:] == TOK.bos_token_id)
    assert bool((train.labels[:, 0] == IGNORE).all())


@pytest.mark.parametrize(
    ("data", "code", "where"),
    [
        ('source = "digits"\nseq_len = 32', "KD502", "seq_len"),
        ('source = "pydoc"\nexclude_classes = [3]', "KD502", "exclude_classes"),
        ('source = "pydoc"\ntokenizer = "bpe"', "KD501", "unknown tokenizer"),
        ('source = "jsonl:missing.jsonl"', "KD502", "cannot read"),
        ('source = "jsonl"', "KD502", "did you mean `jsonl:path/to/file.jsonl`"),
        ('source = "pydoc"\ntokenizer = "hf:nowhere"', "KD502", "no usable tokenizer"),
    ],
)
def test_text_source_mistakes_are_diagnostics(
    tmp_path: Path, data: str, code: str, where: str
) -> None:
    with pytest.raises(KdError) as exc:
        build_data(_run(tmp_path, data))
    text = str(exc.value.diagnostics[0].message) + str(exc.value.diagnostics[0].help)
    assert exc.value.diagnostics[0].code == code
    assert where in text


@pytest.mark.parametrize("causal", [False, True])
def test_token_metrics_and_supervised_loss_count_label_tokens_only(
    tmp_path: Path, causal: bool
) -> None:
    _jsonl(tmp_path / "qa.jsonl", [{"prompt": "abc", "response": "d" * (i + 1)} for i in range(6)])
    data = build_data(_run(tmp_path, 'source = "jsonl:qa.jsonl"\nseq_len = 8\npacking = false'))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(TOK.vocab_size, 8), torch.nn.Linear(8, 259))

    class LM(torch.nn.Module):
        kd_causal = causal

        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, input_ids, attention_mask=None):
            return self.net(input_ids)

    lm = LM()
    train = data.splits.train
    x = {"input_ids": train.input_ids, "attention_mask": train.attention_mask}
    logits, labels = lm(**x).double(), train.labels
    if causal:  # by hand: logits at t predict the label at t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE
    ce = F.cross_entropy(logits[keep], labels[keep])  # label tokens only
    loader = torch.utils.data.DataLoader(train, batch_size=2)
    out = evaluate_logits(lm, loader, torch.device("cpu"), _to)
    assert out["n"] == int(keep.sum())
    assert math.isclose(out["perplexity"], math.exp(float(ce)), rel_tol=1e-4)
    step = Supervised(lm)((x, train.labels, None))
    assert math.isclose(float(step.loss), float(ce), rel_tol=1e-4)


def test_the_documented_text_run_file_builds(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "runfile.md").read_text()
    text = doc.split("# file: qa.toml\n", 1)[1].split("```", 1)[0]
    rows = [{"prompt": f"Q{i}? ", "response": f"A{i}."} for i in range(20)]
    _jsonl(tmp_path / "qa.jsonl", rows)
    data = build_data(parse_run(text, "qa.toml", base_dir=tmp_path))
    assert (len(data.splits.train), len(data.splits.val), len(data.splits.test)) == (14, 2, 4)
    train = data.splits.train
    for row, start in zip(train.labels.tolist(), train.prompt_lengths.tolist(), strict=True):
        assert row[start] == ord("A")  # the first label is the answer's first byte
        assert set(row[:start]) == {IGNORE}


def test_prompt_tokens_make_every_row_start_with_a_prompt() -> None:
    ds = tokenize([Example("", "abcdefghijklmnop")], TOK, seq_len=6, packing=True, prompt_tokens=3)
    assert ds.prompt_lengths.tolist() == [3] * len(ds)
    for row in ds.labels.tolist():
        assert row[:3] == [IGNORE] * 3
    assert ds.labels[0].tolist() == [IGNORE] * 3 + [ord(c) for c in "cde"]
    padded = tokenize([Example("ab", "cdefgh")], TOK, seq_len=6, packing=False, prompt_tokens=2)
    assert padded.prompt_lengths.tolist() == [3]  # the example's own prompt is longer


def test_max_examples_reads_the_first_examples_only(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}"} for i in range(40)])
    data = build_data(
        _run(tmp_path, 'source = "jsonl:d.jsonl"\nmax_examples = 10\npacking = false')
    )
    texts = {
        TOK.decode(r)
        for s in (data.splits.train, data.splits.val, data.splits.test)
        for r in s.input_ids.tolist()
    }
    assert texts == {f"doc {i}" for i in range(10)}
