"""The zoo's causal LMs: causal, sized from the data, tappable, and their own `generate`."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close

from kdspec.compiler.taps import call_model
from kdspec.zoo import build_model


@pytest.mark.parametrize("name", ["lm_small", "lm_tiny"])
def test_logits_are_causal_and_sized_from_the_vocabulary(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=50, in_channels=16).eval()
    ids = torch.randint(0, 50, (2, 12))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out = call_model(model, x)
    assert out.shape == (2, 12, 50)
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 50  # a later token never changes earlier logits
    out2 = model(changed)
    assert_close(out2[:, :8], out[:, :8])
    assert float((out[:, 8:] - out2[:, 8:]).abs().max()) > 1e-3
    modules = dict(model.named_modules())
    assert all(s in modules for s in model.kd_stages)
    assert model.kd_classifier in modules


def test_student_is_smaller_than_teacher() -> None:
    def size(name: str) -> int:
        return sum(p.numel() for p in build_model(name, 259, 64).parameters())

    assert size("lm_tiny") * 4 < size("lm_small")


def test_generate_samples_with_the_global_generator_and_pads_after_eos() -> None:
    torch.manual_seed(0)
    model = build_model("lm_tiny", num_classes=10, in_channels=8).double().eval()
    prompt = torch.tensor([[1, 2], [3, 4]])
    torch.manual_seed(5)
    a = model.generate(prompt, max_new_tokens=6, temperature=0.7)
    torch.manual_seed(5)
    b = model.generate(prompt, max_new_tokens=6, temperature=0.7)
    assert a.shape == (2, 8)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :2], prompt)
    # by hand: the same draws from softmax(logits / T)
    torch.manual_seed(5)
    out = prompt
    for _ in range(6):
        probs = torch.softmax(model(out)[:, -1] / 0.7, dim=-1)
        out = torch.cat([out, torch.multinomial(probs, 1)], dim=1)
    assert torch.equal(a, out)
    greedy = model.generate(prompt, max_new_tokens=3, do_sample=False)
    assert torch.equal(greedy[:, 2], model(prompt)[:, -1].argmax(-1))
    eos = int(a[0, 2])  # the first sampled token of row 0 taken as the end token
    torch.manual_seed(5)
    c = model.generate(prompt, max_new_tokens=6, temperature=0.7, eos_token_id=eos, pad_token_id=9)
    assert c[0, 3:].tolist() == [9] * 5


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_generation_keeps_keys_and_values_and_matches_running_the_whole_prefix(
    prompt_len: int,
) -> None:
    """The cached steps (one new position each) give the logits of a full forward of the
    prefix; past the position embedding the last `max_len` tokens are run again."""
    torch.manual_seed(1)
    model = build_model("lm_small", num_classes=30, in_channels=8, width=16, heads=2).double()
    model.eval()
    prompt = torch.randint(0, 30, (3, prompt_len))
    out = model.generate(prompt, max_new_tokens=12, do_sample=False)
    by_hand = prompt
    for _ in range(12):
        nxt = model(by_hand)[:, -1].argmax(-1, keepdim=True)
        by_hand = torch.cat([by_hand, nxt], dim=1)
    assert torch.equal(out, by_hand)
    pasts: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    steps = [model._logits(out[:, :prompt_len], pasts)]
    for i in range(prompt_len, out.shape[1]):
        steps.append(model._logits(out[:, i : i + 1], pasts, i))
    assert_close(torch.cat(steps, dim=1), model(out))
    model.max_len = 8  # longer than the position embedding: the window slides
    long = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert long.shape == (3, prompt_len + 10)
    assert torch.equal(long[:, -1], model(long[:, -9:-1])[:, -1].argmax(-1))
