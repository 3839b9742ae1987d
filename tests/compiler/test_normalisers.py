"""Normalisers that must not depend on a tensor's shape or on a positive factor (issue 9).

- `frobenius` divides a batch relation ([B, B], SP) by B^2 and anything else by B, decided by
  the knowledge's kind, so an embedding as wide as the batch is not read as a relation.
- `normalize` after `gram` / `fsp` (means over positions) normalises the unscaled matrix: the
  values are the same, and an all-zero channel (a dead ReLU map) keeps the gradient of
  ``normalize(F Fᵀ)`` instead of 1/(H*W) of it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close
from torch import Tensor

from kdspec.api import load_method
from kdspec.compiler import compile_spec


def compiled_loss(term: str, batch: dict[str, Tensor]) -> Tensor:
    low = load_method("t.kd", text=f"method m {{\n  teacher t\n  student s\n  {term}\n}}")
    return compile_spec(low, None, {k: v.detach() for k, v in batch.items()})(batch).loss


def rand(*shape: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("width", [7, 8, 9])
def test_frobenius_on_embeddings_divides_by_the_batch_whatever_the_width(width: int) -> None:
    """Batch 8: widths 7, 8 and 9 all give ||t - s||_F^2 / 8 (width 8 used to give / 64)."""
    t, s = rand(8, width, seed=1), rand(8, width, seed=2)
    loss = compiled_loss(
        "transfer f: from t.embedding to s.embedding with frobenius",
        {"t.embedding": t, "s.embedding": s},
    )
    assert_close(loss, ((t - s) ** 2).sum() / 8, rtol=1e-12)


def test_frobenius_on_a_batch_similarity_divides_by_b_squared() -> None:
    t, s = rand(8, 4, 2, 2, seed=3), rand(8, 6, 2, 2, seed=4)
    loss = compiled_loss(
        "transfer sp: similarity from t.stage[1] to s.stage[1] with frobenius",
        {"t.stage[1]": t, "s.stage[1]": s},
    )

    def sim(x: Tensor) -> Tensor:
        f = x.flatten(1)
        return F.normalize(f @ f.T, dim=1)

    assert_close(loss, ((sim(t) - sim(s)) ** 2).sum() / 64, rtol=1e-12)


def _dead_channel_maps() -> tuple[Tensor, Tensor]:
    t = rand(4, 3, 4, 4, seed=5)
    s = rand(4, 3, 4, 4, seed=6)
    s[:, 1] = 0.0  # a dead ReLU channel
    return t, s.requires_grad_(True)


@pytest.mark.parametrize(
    "term",
    [
        "transfer g: gram | normalize from t.stage[1] to s.stage[1] with mse",
        "transfer g: from normalize(gram(t.stage[1])) to normalize(gram(s.stage[1])) with mse",
    ],
)
def test_normalized_gram_gradient_on_a_dead_channel_is_that_of_the_unscaled_gram(term: str) -> None:
    t, s = _dead_channel_maps()
    loss = compiled_loss(term, {"t.stage[1]": t, "s.stage[1]": s})

    def normalized_gram(x: Tensor) -> Tensor:
        f = x.flatten(2)
        return F.normalize(f @ f.transpose(1, 2), dim=-1)

    expected = F.mse_loss(normalized_gram(s), normalized_gram(t))
    assert_close(loss, expected, rtol=1e-10)
    (got,) = torch.autograd.grad(loss, s)
    (want,) = torch.autograd.grad(expected, s)
    assert_close(got, want, rtol=1e-10)
    assert float(want[:, 1].abs().max()) > 0  # the dead channel does get a gradient


def test_normalized_fsp_gradient_on_a_dead_channel_is_that_of_the_unscaled_matrix() -> None:
    t, s = _dead_channel_maps()
    t2, s2 = rand(4, 2, 4, 4, seed=7), rand(4, 2, 4, 4, seed=8)
    batch = {"t.stage[1]": t, "s.stage[1]": s, "t.stage[2]": t2, "s.stage[2]": s2}
    loss = compiled_loss(
        "transfer f: from normalize(fsp(t.stage[1], t.stage[2])) "
        "to normalize(fsp(s.stage[1], s.stage[2])) with mse",
        batch,
    )

    def normalized_fsp(a: Tensor, b: Tensor) -> Tensor:
        return F.normalize(a.flatten(2) @ b.flatten(2).transpose(1, 2), dim=-1)

    expected = F.mse_loss(normalized_fsp(s, s2), normalized_fsp(t, t2))
    assert_close(loss, expected, rtol=1e-10)
    (got,) = torch.autograd.grad(loss, s)
    (want,) = torch.autograd.grad(expected, s)
    assert_close(got, want, rtol=1e-10)


def test_gram_alone_keeps_its_mean_over_positions() -> None:
    t, s = rand(2, 3, 4, 4, seed=9), rand(2, 3, 4, 4, seed=10)
    loss = compiled_loss(
        "transfer g: gram from t.stage[1] to s.stage[1] with mse",
        {"t.stage[1]": t, "s.stage[1]": s},
    )

    def gram(x: Tensor) -> Tensor:
        f = x.flatten(2)
        return f @ f.transpose(1, 2) / 16

    assert_close(loss, F.mse_loss(gram(s), gram(t)), rtol=1e-12)
