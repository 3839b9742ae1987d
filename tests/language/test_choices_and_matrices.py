"""Issue 9's general features for the prelude: `if` on values known before training, the
identity and diagonal of a relation matrix, and stacking/joining along an axis.

Specs are compiled in functional mode (tensors given by tap text) and compared in float64,
loss and gradients, with the same quantity written in plain torch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.api import check_source, load_method
from kdspec.compiler import compile_spec
from kdspec.source import SourceFile

B, K, D = 6, 5, 4


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def labels(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed))


def terms(text: str, tensors: dict, y=None, overrides=None) -> dict[str, torch.Tensor]:
    low = load_method("spec.kd", text=text, overrides=overrides)
    example = {k: v.detach() for k, v in tensors.items()}
    d = compile_spec(low, None, {**example, "labels": y}, num_classes=K)
    return d.evaluate_terms(tensors, y)


def close(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    assert_close(a, b)
    ga = torch.autograd.grad(a, inputs, retain_graph=True)
    gb = torch.autograd.grad(b, inputs, retain_graph=True)
    for x, y in zip(ga, gb, strict=True):
        assert_close(x, y)


def codes(text: str) -> set[str]:
    _, diags = check_source(SourceFile("spec.kd", text))
    return {d.code for d in diags}


SQ = """
def sq(t, s, reduction="mean") =
    if reduction == "mean" then mean((s - t)^2, over=all)
    else if reduction == "sum" then sum((s - t)^2, over=all)
    else sum((s - t)^2, over=all) / B
"""


def test_if_on_a_word_parameter_picks_the_formula_when_the_def_is_expanded():
    zt, zs = rand(B, K, seed=0), rand(B, K, seed=1)
    text = (
        SQ
        + """
method m {
  param red = "sum"
  teacher t
  student s
  transfer by_default: from t.logits to s.logits with sq
  transfer by_word: from t.logits to s.logits with sq(reduction="batchmean")
  transfer by_param: from t.logits to s.logits with sq(reduction=red)
}
"""
    )
    got = terms(text, {"t.logits": zt, "s.logits": zs})
    d2 = (zs - zt) ** 2
    close(got["by_default"], d2.mean(), [zt, zs])
    close(got["by_word"], d2.sum() / B, [zt, zs])
    close(got["by_param"], d2.sum(), [zt, zs])
    # A parameter set on the command line picks again.
    again = terms(text, {"t.logits": zt, "s.logits": zs}, overrides={"red": "mean"})
    close(again["by_param"], d2.mean(), [zt, zs])


def test_if_in_a_method_is_chosen_when_the_spec_is_lowered():
    text = """
method m {
  param T = 4
  teacher t
  student s
  transfer x: from t.logits to s.logits with mse weight if T > 2 then T^2 else 1
}
"""
    from kdspec.ir import models as ir
    from kdspec.ir.evaluate import evaluate

    low = load_method("spec.kd", text=text)
    assert low.method.terms[0].weight.find(ir.Call) is None  # the branch is the weight

    assert evaluate(low.method.terms[0].weight, low.method.params) == 16.0
    low = load_method("spec.kd", text=text, overrides={"T": 1})
    assert evaluate(low.method.terms[0].weight, low.method.params) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "def f(t, s) = if mean(t, over=all) > 0 then mse(t, s) else l1(t, s)\n"
        "method m { teacher t student s transfer from t.logits to s.logits with f }",
        "method m { teacher t student s\n"
        "  transfer from t.logits to s.logits with mse weight if B > 2 then 1 else 2 }",
        "method m { teacher t student s\n"
        "  transfer from t.logits to s.logits with mse weight if t.logits > 0 then 1 else 2 }",
        "method m { teacher t student s\n"
        "  transfer from t.logits to s.logits with mse weight if warmup(epochs=2) > 0 then 1 "
        "else 2 }",
    ],
)
def test_a_condition_not_known_before_training_is_kd216(text):
    assert "KD216" in codes(text)


def test_rkd_zeroed_diagonal_and_infonce_positives():
    et, es = rand(B, D, seed=2), rand(B, D, seed=3)
    text = """
def off_diagonal(r) = r * (1 - eye(r))
def nce(t, s, tau=0.1) {
  let logp = log(softmax(relation(s, t, over=batch, kernel=cosine) / tau, over=batch2))
  return -sum(diag(logp), over=batch) / B
}
method m {
  teacher t
  student s
  transfer d: from off_diagonal(relation(t.embedding, over=batch, kernel=distance))
      to off_diagonal(relation(s.embedding, over=batch, kernel=distance)) with mse
  transfer n: from t.embedding to s.embedding with nce(tau=0.2)
}
"""
    got = terms(text, {"t.embedding": et, "s.embedding": es})
    off = 1 - torch.eye(B, dtype=torch.float64)
    dt, ds = torch.cdist(et, et) * off, torch.cdist(es, es) * off
    close(got["d"], F.mse_loss(ds, dt), [et, es])
    sim = F.normalize(es, dim=1) @ F.normalize(et, dim=1).T / 0.2
    close(got["n"], F.cross_entropy(sim, torch.arange(B)), [et, es])


def binary_target(x: torch.Tensor, y: torch.Tensor, T: float) -> torch.Tensor:
    """DKD's [log p_target, log(1 - p_target)] (mdistiller's TCKD), in log space."""
    z = x / T
    lse = torch.logsumexp(z, -1)
    rest = torch.logsumexp(z.masked_fill(F.one_hot(y, z.shape[-1]).bool(), float("-inf")), -1)
    return torch.stack([z.gather(1, y[:, None])[:, 0] - lse, rest - lse], -1)


def test_binary_target_from_stack_equals_the_log_space_formula():
    zt, zs = rand(B, K, seed=4), rand(B, K, seed=5)
    y = labels()
    text = """
def two_way(x, T=1) {
  let z = x / T
  let rest = logsumexp(z - 1000 * label_mask(z), over=class)
  return softmax(stack(at_label(z), rest, over=class), over=class)
}
method m {
  teacher t
  student s
  transfer b: two_way(T=4) from t.logits to s.logits with kl
}
"""
    got = terms(text, {"t.logits": zt, "s.logits": zs}, y)["b"]
    pt, ps = binary_target(zt, y, T=4), binary_target(zs, y, T=4)
    want = F.kl_div(ps, pt, reduction="batchmean", log_target=True)
    close(got, want, [zt, zs])


def test_concat_joins_along_an_axis():
    zt, zs = rand(B, K, seed=6), rand(B, K, seed=7)
    text = """
method m {
  teacher t
  student s
  transfer c:
      from concat(t.logits, 2 * t.logits, over=class)
      to concat(s.logits, 2 * s.logits, over=class)
      with mse
}
"""
    got = terms(text, {"t.logits": zt, "s.logits": zs})["c"]
    close(got, F.mse_loss(torch.cat([zs, 2 * zs], 1), torch.cat([zt, 2 * zt], 1)), [zt, zs])
