"""Language features the prelude's losses are written with (issue 9): `choose` on values known
before training, `over=` given as torch dimensions (the `dim=` of legacy losses), the axis set
`batches`, Gaussians from two tensors, and values checked inside the defs a spec calls."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close

from kdspec.api import check_source, load_method
from kdspec.compiler import compile_spec
from kdspec.diagnostics import KdError
from kdspec.source import SourceFile

D64 = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def loss_of(text: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    d = compile_spec(
        load_method("m.kd", text=text), None, {k: v.detach() for k, v in batch.items()}
    )
    return d(batch).loss


def codes(text: str) -> list[str]:
    _, found = check_source(SourceFile(name="m.kd", text=text))
    return [d.code for d in found]


CHOOSE = """
def red(t, s, how="mean") {
  let e = (s - t) ^ 2
  return choose(how == "sum", sum(e, over=all), mean(e, over=all))
}
method m {
  param how = "HOW"
  teacher t
  student s
  transfer v: from t.embedding to s.embedding with red(how=how)
}
"""


@pytest.mark.parametrize(("how", "reduce"), [("sum", torch.sum), ("mean", torch.mean)])
def test_choose_takes_the_branch_its_condition_names(how: str, reduce) -> None:  # type: ignore[no-untyped-def]
    t, s = rand(4, 3, seed=1), rand(4, 3, seed=2)
    got = loss_of(CHOOSE.replace("HOW", how), {"t.embedding": t, "s.embedding": s})
    assert_close(got, reduce((s - t) ** 2), rtol=1e-12)


def test_the_branch_choose_leaves_out_is_not_typed() -> None:
    # `over=class` is wrong for an embedding, but the condition leaves that branch out.
    text = """
def f(t, s, flat=true) = choose(flat, mean((s - t) ^ 2, over=all), mean((s - t) ^ 2, over=class))
method m {
  teacher t
  student s
  transfer v: from t.embedding to s.embedding with f
}
"""
    assert codes(text) == []
    assert "KD313" in codes(text.replace("with f", "with f(flat=false)"))


def test_a_condition_known_only_during_training_is_kd216() -> None:
    text = """
def f(t, s) = choose(mean(s, over=all) > 0, mean(s, over=all), mean(t, over=all))
method m {
  teacher t
  student s
  transfer v: from t.embedding to s.embedding with f
}
"""
    assert "KD216" in codes(text)


def test_none_and_words_compare_with_equals() -> None:
    text = """
def f(t, s, dim=none) = choose(dim == none, sum(s - t, over=all), sum(s - t, over=dim))
method m {
  teacher t
  student s
  transfer v: from t.embedding to s.embedding with f(dim=DIM)
}
"""
    t, s = rand(4, 3, seed=1), rand(4, 3, seed=2)
    batch = {"t.embedding": t, "s.embedding": s}
    assert_close(loss_of(text.replace("DIM", "none"), batch), (s - t).sum(), rtol=1e-12)
    assert_close(loss_of(text.replace("DIM", "[0, 1]"), batch), (s - t).sum(), rtol=1e-12)


def test_torch_dimensions_as_over_name_their_axes_when_the_layout_is_fixed() -> None:
    # (batch, class): dimension 1 is `class`, so the centred value lines up by name.
    text = """
def centred(t, s) = sum((s - mean(s, over=1)) ^ 2, over=all)
method m {
  teacher t
  student s
  transfer v: from t.logits to s.logits with centred
}
"""
    t, s = rand(4, 4, seed=1), rand(4, 4, seed=2)
    got = loss_of(text, {"t.logits": t, "s.logits": s})
    assert_close(got, ((s - s.mean(1, keepdim=True)) ** 2).sum(), rtol=1e-12)
    # Dimension 2 exists on token data ((batch, token, class) logits), so the checker leaves it
    # to the compiler, which reports it against the batch it gets (here: no tokens).
    from kdspec.diagnostics import KdError

    with pytest.raises(KdError) as info:
        loss_of(text.replace("over=1", "over=2"), {"t.logits": t, "s.logits": s})
    assert "KD313" in [d.code for d in info.value.diagnostics]


def test_values_of_unknown_axes_with_different_dimension_counts_do_not_broadcast() -> None:
    # Feature maps: `space` makes dimension 1 of unknown axis; [B, C, H, W] - [B, H, W] would
    # line up from the right in torch. It is an error, not a silent misalignment.
    text = """
def centred(t, s) = sum((s - mean(s, over=1)) ^ 2, over=all)
method m {
  teacher t
  student s
  transfer v: from t.stage[1] to s.stage[1] with centred
}
"""
    x = rand(2, 2, 2, 2)
    with pytest.raises(KdError, match="different numbers of dims"):
        loss_of(text, {"t.stage[1]": x, "s.stage[1]": x + 1})


def test_batches_is_batch_and_batch2() -> None:
    text = """
def per_pair(t, s) = sum((s - t) ^ 2, over=all) / size(t, over=batches)
method m {
  teacher t
  student s
  transfer v: from t.X to s.X with per_pair
}
"""
    e1, e2 = rand(4, 4, seed=1), rand(4, 4, seed=2)
    got = loss_of(text.replace("X", "embedding"), {"t.embedding": e1, "s.embedding": e2})
    assert_close(got, ((e2 - e1) ** 2).sum() / 4, rtol=1e-12)
    rel = text.replace("t.X", "relation(t.embedding, over=batch)").replace(
        "s.X", "relation(s.embedding, over=batch)"
    )
    got = loss_of(rel, {"t.embedding": e1, "s.embedding": e2})
    assert_close(got, ((e2 @ e2.T - e1 @ e1.T) ** 2).sum() / 16, rtol=1e-12)


def test_gaussian_nll_of_a_gaussian_built_from_two_tensors() -> None:
    text = """
method m {
  teacher t
  student s
  transfer v: from t.stage[1] to gaussian(s.stage[1], exp(s.stage[2])) with gaussian_nll
}
"""
    t, mu, logvar = rand(2, 3, 2, 2, seed=1), rand(2, 3, 2, 2, seed=2), rand(2, 3, 2, 2, seed=3)
    mu.requires_grad_()
    got = loss_of(text, {"t.stage[1]": t, "s.stage[1]": mu, "s.stage[2]": logvar})
    var = logvar.exp()
    want = (0.5 * ((mu - t) ** 2 / var + var.log())).mean()
    assert_close(got, want, rtol=1e-12)
    (g1,) = torch.autograd.grad(got, mu)
    (g2,) = torch.autograd.grad(want, mu)
    assert_close(g1, g2, rtol=1e-12)


def test_a_value_written_inside_a_def_is_checked_where_the_def_is_used() -> None:
    text = """
def nst(t, s) = mmd(t, s, kernel="cubic")
method m {
  teacher t
  student s
  transfer v: channel_dist from t.stage[1] to s.stage[1] with nst
}
"""
    assert "KD205" in codes(text)
    assert codes(text.replace('"cubic"', '"rbf"')) == []
