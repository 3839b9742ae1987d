"""On-policy (GKD lmbda) and sequence-level (teacher generations) views of token data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.compiler.views import IGNORE, OnPolicy, TeacherGenerations, prompt_lengths
from kdspec.data.text import ByteTokenizer, Example, tokenize
from kdspec.diagnostics import KdError
from kdspec.zoo import build_model

TOK = ByteTokenizer()
EOS, PAD = TOK.eos_token_id, TOK.pad_token_id


def _lm(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=TOK.vocab_size, in_channels=32)
    model.eos_token_id, model.pad_token_id = EOS, PAD  # as a tokenizer-aware HF config says
    return model


def _data(packing: bool = False) -> object:
    examples = [Example(f"q{i % 3}:", "answer " * (1 + i % 2)) for i in range(6)]
    return tokenize(examples, TOK, seq_len=24, packing=packing)


def _batch(ds: object, n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    x = {"input_ids": ds.input_ids[:n], "attention_mask": ds.attention_mask[:n]}
    return x, ds.labels[:n], torch.arange(n)


def _by_hand(model, prompt: torch.Tensor, new: int, temperature: float) -> torch.Tensor:
    """Ancestral sampling from softmax(logits / T), stopping a row at its eos."""
    out, done = prompt, torch.zeros(len(prompt), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(new):
            probs = torch.softmax(model(out)[:, -1] / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == EOS
    return out


def test_lmbda_one_replaces_every_response_by_the_students_sample() -> None:
    ds, student = _data(), _lm("lm_tiny", 0).eval()
    x, labels, index = _batch(ds)
    prompts = prompt_lengths(labels)
    assert prompts.tolist() == [4] * 6  # bos + "qN:"
    torch.manual_seed(7)
    new_x, new_labels = OnPolicy(1.0, 5, 0.8)(x, labels, index, student)
    torch.manual_seed(7)
    torch.rand(6)  # the view draws its rows first
    sample = _by_hand(student, x["input_ids"][:, :4], 5, 0.8)  # one prompt length: one call
    for i in range(6):
        full = sample[i]
        hits = (full[4:] == EOS).nonzero()
        n = 4 + int(hits[0]) + 1 if len(hits) else len(full)
        assert new_x["input_ids"][i, :n].tolist() == full[:n].tolist()
        assert new_x["attention_mask"][i].tolist() == [1] * n + [0] * (24 - n)
        assert new_labels[i].tolist() == [IGNORE] * 4 + full[4:n].tolist() + [IGNORE] * (24 - n)


def test_lmbda_zero_keeps_the_batch_and_a_fraction_is_per_row() -> None:
    ds, student = _data(), _lm("lm_tiny", 0)
    x, labels, index = _batch(ds)
    same_x, same_labels = OnPolicy(0.0, 5, 1.0)(x, labels, index, student)
    assert torch.equal(same_x["input_ids"], x["input_ids"])
    assert torch.equal(same_labels, labels)
    torch.manual_seed(3)
    rows = torch.rand(6) < 0.5
    torch.manual_seed(3)
    _, half = OnPolicy(0.5, 5, 1.0)(x, labels, index, student)
    for i in range(6):
        assert torch.equal(half[i], labels[i]) != bool(rows[i])
    assert student.training  # generation ran in eval mode and restored it


def test_teacher_generations_are_greedy_made_once_and_reused() -> None:
    ds, teacher = _data(), _lm("lm_small", 1)
    x, labels, index = _batch(ds)
    calls: list[int] = []
    generate = teacher.generate

    def counted(**kw):
        calls.append(len(kw["input_ids"]))
        return generate(**kw)

    teacher.generate = counted
    view = TeacherGenerations(6, 0.0)
    first = view(x, labels, index, teacher)
    greedy = generate(x["input_ids"][:, :4], max_new_tokens=6, do_sample=False)
    assert first[1][0, 4:10].tolist() == greedy[0, 4:].tolist()
    assert calls == [6]
    again = view(x, labels, index, teacher)  # the next epoch: from the cache
    assert calls == [6]
    assert torch.equal(again[1], first[1])
    assert torch.equal(again[0]["input_ids"], first[0]["input_ids"])
    sub = view(
        {k: v[[2, 0]] for k, v in x.items()}, labels[[2, 0]], torch.tensor([2, 0]), teacher
    )  # another batch order: the same sample keeps its generation
    assert torch.equal(sub[1][1], first[1][0])


SPEC = Path(__file__).resolve().parents[2] / "specs" / "gkd.kd"
GKD = load_method(SPEC, overrides={"lmbda": 1.0, "max_new_tokens": 4})


def test_the_gkd_spec_scores_the_students_samples_with_the_teacher() -> None:
    ds = _data()
    t, s = _lm("lm_small", 1).eval(), _lm("lm_tiny", 0)
    x, labels, index = _batch(ds)
    d = compile_spec(GKD, {"t": t, "s": s}, (x, labels, index), train_data=ds)
    seen: list[torch.Tensor] = []
    t.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"]), with_kwargs=True)
    torch.manual_seed(11)
    out = d((x, labels, index))
    torch.manual_seed(11)
    torch.rand(6)
    sample = _by_hand(s.eval(), x["input_ids"][:, :4], 4, 1.0)
    assert torch.equal(seen[-1][:, : sample.shape[1]], sample)  # the teacher read the samples
    assert math.isfinite(float(out.loss)) and float(out.loss) > 0


def test_a_generated_view_every_role_must_see_and_packed_rows_are_refused(tmp_path) -> None:
    ds = _data()
    batch = _batch(ds)
    models = {"t": _lm("lm_small", 1), "s": _lm("lm_tiny", 0)}
    path = tmp_path / "blind.kd"
    path.write_text(SPEC.read_text().replace("teacher t sees mixed", "teacher t"))
    blind = load_method(path)
    with pytest.raises(KdError, match="every role must see"):
        compile_spec(blind, models, batch, train_data=ds)
    packed = _data(packing=True)
    with pytest.raises(KdError, match="packed rows have none"):
        compile_spec(GKD, models, _batch(packed, 2), train_data=packed)


def test_token_inputs_move_to_the_compile_device() -> None:
    from kdspec.compiler.bind import unpack

    x = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
    moved = unpack((x, None)).to("meta").x  # the example batch, as compile_spec moves it
    assert moved["input_ids"].device.type == "meta"


def test_the_output_cache_refuses_a_batch_rewritten_with_generated_data() -> None:
    ds = _data()
    d = compile_spec(
        GKD,
        {"t": _lm("lm_small", 1).eval(), "s": _lm("lm_tiny", 0)},
        _batch(ds),
        train_data=ds,
        num_samples=6,
    )
    with pytest.raises(ValueError, match=r"view `mixed` \(`on_policy`\), which is random"):
        d.cache_frozen_outputs()


def test_generated_rows_end_and_pad_with_the_datas_tokenizer_ids() -> None:
    from kdspec.compiler.views import _generated_view

    ds = _data()
    torch.manual_seed(0)
    bare = build_model("lm_tiny", num_classes=TOK.vocab_size, in_channels=32)  # no config ids
    view = _generated_view("on_policy", {"lmbda": 1.0, "max_new_tokens": 3}, ds)
    assert view.special == {"eos_token_id": EOS, "pad_token_id": PAD}
    x, labels, index = _batch(ds)
    new_x, _ = view(x, labels, index, bare)
    padded = new_x["attention_mask"] == 0
    assert bool((new_x["input_ids"][padded] == PAD).all())
