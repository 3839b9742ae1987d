"""The in-memory cache of frozen teachers' tapped outputs, keyed by sample index."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.zoo import build_model

FITNETS = """method fitnets {
  teacher t
  student s
  transfer hint: from t.stage[2] to regressor(s.stage[2]) with mse
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  supervise ce: s.logits with cross_entropy
}"""

NOISY = """method noisy {
  teacher t
  student s
  view noisy = gaussian_noise(std=0.1)
  transfer kd: softmax(T=4) from t[noisy].logits to s.logits with kl
}"""

N = 24


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, 10, (N,), generator=g)


def compiled(text: str = FITNETS, seed: int = 0):
    torch.manual_seed(seed)
    t, s = build_model("resnet8", 10, 1), build_model("cnn_tiny", 10, 1)
    x, y = data()
    return compile_spec(
        load_method("f.kd", text=text),
        {"t": t, "s": s},
        (x[:4], y[:4], torch.arange(4)),
        num_samples=N,
    )


def counting(d):
    calls = []
    d.roles["t"].register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def test_cached_terms_equal_a_recompute_and_the_teacher_runs_once_per_sample() -> None:
    x, y = data()
    plain, cached = compiled(), compiled()
    cached.cache_frozen_outputs()
    calls = counting(cached)
    batches = [torch.arange(0, 8), torch.arange(8, 24), torch.tensor([5, 17, 2, 9])]
    for epoch in range(2):
        for idx in batches:
            a = plain((x[idx], y[idx], idx)).grad_terms
            b = cached((x[idx], y[idx], idx)).grad_terms
            assert a.keys() == b.keys()
            for k in a:  # exact: the cache keeps the teacher's own fp32 values
                assert torch.equal(a[k], b[k]), (epoch, k)
    assert len(calls) == 2  # the first two batches cover every sample; the rest are hits
    assert cached._teacher_cache.hits == 2 * 3 - 2 and not any(
        p.grad is not None for p in cached.roles["t"].parameters()
    )


def test_the_cache_needs_indices_and_refuses_random_views() -> None:
    d = compiled()
    d.cache_frozen_outputs()
    x, y = data()
    with pytest.raises(ValueError, match="sample indices"):
        d((x[:4], y[:4]))
    noisy = compiled(NOISY)
    with pytest.raises(ValueError, match=r"view `noisy`.*random"):
        noisy.cache_frozen_outputs()


def test_evaluation_batches_bypass_the_cache() -> None:
    d = compiled()
    d.cache_frozen_outputs()
    x, y = data()
    idx = torch.arange(4)
    d((x[:4], y[:4], idx))
    d.eval()
    other = torch.randn(4, 1, 8, 8)  # e.g. validation samples with the same positions
    ref = compiled()
    ref((x[:4], y[:4], idx))  # the same batch norm statistics in the student
    ref.eval()
    assert_close(d((other, y[:4], idx)).loss, ref((other, y[:4], idx)).loss)
