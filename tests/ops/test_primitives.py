"""Primitives against plain torch, by axis name (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.ops import primitives as P
from kdspec.vocabulary.axes import FEATURE_AXES

MAP = ("batch", "channel", "space")
LOGITS = ("batch", "class")


def x4(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "kw", "torch_fn"),
    [
        ("sum", {}, lambda x, d: x.sum(d)),
        ("mean", {}, lambda x, d: x.mean(d)),
        ("std", {}, lambda x, d: x.std(d)),
        ("var", {"correction": 0}, lambda x, d: x.var(d, correction=0)),
        ("max", {}, lambda x, d: x.amax(d)),
        ("min", {}, lambda x, d: x.amin(d)),
        ("logsumexp", {}, lambda x, d: torch.logsumexp(x, d)),
        ("norm", {"p": 1.0}, lambda x, d: x.abs().sum(d)),
        ("quantile", {"q": 0.25}, lambda x, d: torch.quantile(x.flatten(2), 0.25, dim=-1)),
        ("median", {}, lambda x, d: x.flatten(2).median(-1).values),
    ],
)
def test_reductions_over_space_cover_both_spatial_dims(name, kw, torch_fn):
    x = x4()
    got = P.PRIMITIVES[name](x, axes=[FEATURE_AXES], over="space", **kw)
    assert_close(got, torch_fn(x, (2, 3)))


def test_reduction_over_several_axes():
    x = x4(1)
    got = P.sum(x, axes=[MAP], over=["channel", "space"])
    assert_close(got, x.sum((1, 2, 3)))


def test_softmax_over_space_is_one_distribution_over_positions():
    x = x4(2)
    got = P.softmax(x, axes=[MAP], over="space", T=2.0).exp()
    want = F.softmax(x.flatten(2) / 2, dim=-1).reshape_as(x)
    assert_close(got, want)


def test_normalize_over_channel():
    x = x4(3)
    assert_close(P.normalize(x, axes=[MAP], over="channel"), F.normalize(x, dim=1))


@pytest.mark.parametrize("kernel", ["dot", "cosine", "sqdistance", "distance", "rbf"])
def test_relation_between_samples(kernel):
    x = x4(4)
    v = x.flatten(1)
    sq = torch.cdist(v, v).pow(2)
    want = {
        "dot": v @ v.T,
        "cosine": F.normalize(v, dim=1) @ F.normalize(v, dim=1).T,
        "sqdistance": sq,
        "distance": sq.clamp_min(1e-12).sqrt() * (sq > 0),
        "rbf": torch.exp(-0.5 * sq),
    }[kernel]
    got = P.relation(x, axes=[MAP], over="batch", kernel=kernel, gamma=0.5)
    assert_close(got, want)


def test_relation_over_channel_is_a_gram_matrix_per_sample():
    x = x4(5)
    f = x.flatten(2)
    assert_close(P.relation(x, axes=[MAP], over="channel"), f @ f.transpose(1, 2))


def test_relation_over_space_relates_positions():
    x = x4(6)
    f = x.flatten(2).transpose(1, 2)  # [B, HW, C]
    assert_close(P.relation(x, axes=[MAP], over="space"), f @ f.transpose(1, 2))


def test_cross_relation_of_two_values():
    a, b = x4(7), x4(8)
    va, vb = a.flatten(1), b.flatten(1)
    assert_close(P.relation(a, b, axes=[MAP, MAP], over="batch"), va @ vb.T)


def test_operands_line_up_by_axis_name():
    x = x4(9)
    w = torch.arange(3, dtype=torch.float64)  # (batch)
    c = torch.arange(4, dtype=torch.float64)  # per channel: (channel)
    got = P.binary("*", x, w, [MAP, ("batch",)])
    assert_close(got, x * w[:, None, None, None])
    got = P.binary("+", c, x, [("channel",), MAP])
    assert_close(got, x + c[None, :, None, None])
    pooled = x.mean((2, 3))  # (batch, channel) against (batch, channel, space)
    assert_close(
        P.binary("-", x, pooled, [MAP, ("batch", "channel")]), x - pooled[:, :, None, None]
    )


def test_comparisons_are_float_masks():
    x = x4(10)
    got = P.binary(">", x, 0.0, [MAP, ()])
    assert got.dtype == torch.float64
    assert_close(got, (x > 0).double())


def test_labels_topk_rank():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 6, 2, 2])
    assert_close(P.label_mask(z, axes=[LOGITS], labels=y), F.one_hot(y, 7).double())
    assert_close(P.at_label(z, axes=[LOGITS], labels=y), z.gather(1, y[:, None])[:, 0])
    top2 = P.topk(z, axes=[LOGITS], k=2, over="class")
    assert top2.sum(1).tolist() == [2.0] * 5
    picked = (z * top2).sum(1)
    assert_close(picked, z.topk(2, 1).values.sum(1))
    rank = P.rank(z, axes=[LOGITS], over="class")
    assert_close(rank.gather(1, z.argmax(1, keepdim=True))[:, 0], torch.zeros(5).double())


def test_gradient_reversal_flips_and_scales():
    x = torch.ones(3, requires_grad=True, dtype=torch.float64)
    P.grad_reverse(x, scale=0.5).sum().backward()
    assert_close(x.grad, torch.full((3,), -0.5, dtype=torch.float64))


def test_learned_tensor_shapes():
    x = x4(12)
    assert P.learned(x, axes=[MAP], over="channel", init=2.0).value.shape == (4,)
    assert P.learned(None, init=1.0).value.shape == ()
    per_sample = P.learned(None, over="batch", num_samples=10)
    assert per_sample(torch.tensor([1, 4])).shape == (2,)
    head = P.head(x, axes=[MAP], init=0.3)
    assert_close(head(x), torch.full((3,), 0.3, dtype=torch.float64))


def test_tokens_and_heads():
    x = x4(13)
    t = P.tokens(x)
    assert t.shape == (3, 30, 4)
    h = P.heads(torch.randn(2, 5, 12, dtype=torch.float64), n=3)
    assert h.shape == (2, 3, 5, 4)


def test_eye_and_diag_of_a_relation_matrix():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    r = P.relation(x, axes=[("batch", "channel")], over="batch", kernel="distance")
    rel = [("batch", "batch2")]
    assert_close(P.eye(r, axes=rel), torch.eye(5, dtype=torch.float64))
    assert_close(P.diag(r, axes=rel), torch.diagonal(r))
    g = P.relation(x4(21), axes=[MAP], over="channel")  # (batch, channel, channel2)
    assert_close(P.eye(g, axes=[MAP]), torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    assert_close(P.diag(g, axes=[MAP]), torch.diagonal(g, dim1=1, dim2=2))


def test_stack_adds_an_axis_and_concat_joins_along_one():
    g = torch.Generator().manual_seed(22)
    p = torch.rand(6, generator=g, dtype=torch.float64)
    assert_close(P.stack(p, 1 - p, axes=[("batch",)] * 2, over="class"), torch.stack([p, 1 - p], 1))
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    assert_close(P.concat(z, 2 * z, axes=[LOGITS] * 2, over="class"), torch.cat([z, 2 * z], 1))
    assert_close(P.concat(z, 2 * z, axes=[LOGITS] * 2, over="batch"), torch.cat([z, 2 * z], 0))
