"""Transforms against independent float64 computations (loops, plain formulas, other torch ops)."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from language_values import value
from tolerance import assert_close
from torch import nn

from kdspec.ops import transforms as tf

D64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float | None = None) -> None:
    # inputs are O(1): an expected zero is held to the dtype's tolerance at scale 1
    assert_close(
        actual, expected, rtol=tol, scale=max(1.0, float(torch.as_tensor(expected).abs().max()))
    )


def randn(*shape: int, dtype: torch.dtype = D64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Logit transforms
# --------------------------------------------------------------------------------------------


def test_softmax_is_log_of_explicit_softmax() -> None:
    x = randn(5, 7)
    for temp in (1.0, 4.0):
        e = torch.exp(x / temp)
        expected = torch.log(e / e.sum(dim=1, keepdim=True))
        close(tf.softmax(x, T=temp), expected)
        close(tf.log_softmax(x, T=temp), expected)


def test_zscore_uses_unbiased_std() -> None:
    x = randn(4, 9)
    expected = torch.empty_like(x)
    for i in range(4):
        row = x[i].tolist()
        mu = sum(row) / len(row)
        sd = math.sqrt(sum((v - mu) ** 2 for v in row) / (len(row) - 1))
        expected[i] = torch.tensor([(v - mu) / (1e-7 + sd) for v in row])
    close(value("zscore(s.logits)", {"s.logits": x}), expected)


def test_binary_target_matches_explicit_probabilities() -> None:
    x = randn(6, 10) * 3
    labels = torch.randint(0, 10, (6,))
    temp = 4.0
    p = torch.exp(x / temp)
    p = p / p.sum(dim=1, keepdim=True)
    p_gt = p[torch.arange(6), labels]
    expected = torch.log(torch.stack([p_gt, 1 - p_gt], dim=1))
    out = value("binary_target(s.logits, T=4)", {"s.logits": x}, labels)
    assert out.shape == (6, 2)
    close(out, expected)
    close(out.exp().sum(1), torch.ones(6, dtype=D64))


def test_binary_target_is_stable_for_confident_logits() -> None:
    x = torch.tensor([[200.0, 0.0, 0.0], [0.0, -300.0, 0.0]], dtype=D64)
    labels = torch.tensor([0, 1])
    out = value("binary_target(s.logits)", {"s.logits": x}, labels)
    assert torch.isfinite(out).all()
    # log(1 - p_gt) for a near-certain target: log(2 e^-200) = log 2 - 200
    close(out[0, 1], torch.tensor(math.log(2) - 200.0, dtype=D64))


def test_non_target_is_renormalised_non_target_distribution() -> None:
    x = randn(5, 8) * 2
    labels = torch.randint(0, 8, (5,))
    temp = 2.0
    out = value("non_target(s.logits, T=2)", {"s.logits": x}, labels, num_classes=8).exp()
    p = torch.softmax(x / temp, dim=1)
    for i in range(5):
        g = int(labels[i])
        rest = 1.0 - p[i, g]
        for j in range(8):
            want = 0.0 if j == g else float(p[i, j] / rest)
            assert abs(float(out[i, j]) - want) < 1e-9


def test_mean_dist_is_log_of_weighted_mean() -> None:
    a = tf.softmax(randn(4, 6))
    b = tf.softmax(randn(4, 6))
    c = tf.softmax(randn(4, 6))
    close(tf.mean_dist(a, b, c), torch.log((a.exp() + b.exp() + c.exp()) / 3))
    w = [1.0, 3.0, 0.0]
    close(tf.mean_dist(a, b, c, weights=w), torch.log((a.exp() + 3 * b.exp()) / 4))
    close(tf.mean_dist([a, b]), tf.mean_dist(a, b))
    close(tf.mean_dist(a, b).exp().sum(1), torch.ones(4, dtype=D64))


def test_mean_plain_and_weighted() -> None:
    a, b = randn(3, 4), randn(3, 4)
    close(tf.mean(a, b), (a + b) / 2)
    close(tf.mean(a, b, weights=[1.0, 3.0]), 0.25 * a + 0.75 * b)
    with pytest.raises(ValueError, match="weights"):
        tf.mean(a, b, weights=[1.0])


def test_virtual_teacher() -> None:
    labels = torch.tensor([2, 0, 4])
    out = tf.virtual_teacher(labels, 5, correct=0.9, dtype=D64)
    for i, g in enumerate(labels.tolist()):
        for j in range(5):
            assert float(out[i, j]) == pytest.approx(0.9 if j == g else 0.1 / 4)
    assert out.dtype == D64
    with pytest.raises(ValueError):
        tf.virtual_teacher(labels, 1)


# --------------------------------------------------------------------------------------------
# Feature transforms
# --------------------------------------------------------------------------------------------


def test_attention_matches_channel_loop_and_repdistiller() -> None:
    x = randn(2, 3, 4, 5)
    acc = torch.zeros(2, 4, 5, dtype=D64)
    for c in range(3):
        acc += x[:, c].abs() ** 2
    flat = (acc / 3).reshape(2, -1)
    expected = flat / flat.pow(2).sum(1, keepdim=True).sqrt()
    out = value("attention(s.stage[1])", {"s.stage[1]": x}).flatten(1)
    assert out.shape == (2, 20)
    close(out, expected)
    # RepDistiller Attention.at(f) = F.normalize(f.pow(p).mean(1).view(B, -1))
    close(out, F.normalize(x.pow(2).mean(1).view(2, -1)))
    tokens = randn(2, 6, 8)
    # Token features have no positions: the prelude's `attention` is for feature maps (the
    # Python one normalised [B, L, D] over tokens); written out, the token version is
    # normalize(mean(abs(x)^3, over=channel), over=token).
    at3 = value("normalize(mean(abs(tokens(s.stage[1])) ^ 3, over=channel), over=token)",
                {"s.stage[1]": tokens})  # fmt: skip
    close(at3, F.normalize(tokens.abs().pow(3).mean(2)))


def test_normalize_flattens_maps() -> None:
    x = randn(2, 3, 2, 2)
    flat = x.reshape(2, -1)
    close(tf.normalize(x), flat / flat.norm(dim=1, keepdim=True))
    v = randn(4, 5)
    close(tf.normalize(v, p=1.0), v / v.abs().sum(1, keepdim=True))


def test_flatten_pool_interpolate() -> None:
    x = randn(2, 3, 4, 6)
    close(value("flatten(s.stage[1])", {"s.stage[1]": x}), x.reshape(2, 72))
    close(tf.pool(x), x.sum(dim=(2, 3)) / 24)
    # 2x2 adaptive pooling of a 4x6 map averages 2x3 blocks.
    blocks = x.reshape(2, 3, 2, 2, 2, 3).mean(dim=(3, 5))
    close(tf.pool(x, size=(2, 2)), blocks)
    tokens = randn(2, 5, 7)
    close(tf.pool(tokens), tokens.mean(1))
    vec = randn(2, 7)
    assert tf.pool(vec) is vec
    # Halving with bilinear, align_corners=False, samples between pixel pairs: a 2x2 average.
    y = randn(2, 3, 8, 8)
    close(tf.interpolate(y, 4), y.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5)))
    close(tf.interpolate(y, (8, 8)), y)
    assert tf.interpolate(y, (5, 11)).shape == (2, 3, 5, 11)


def test_gram_matches_loops() -> None:
    x = randn(2, 3, 2, 3)
    out = value("gram(s.stage[1])", {"s.stage[1]": x})
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        want = sum(float(x[b, i, h, w] * x[b, j, h, w]) for h in range(2) for w in range(3)) / 6
        assert float(out[b, i, j]) == pytest.approx(want, abs=1e-9)


def fsp(a: torch.Tensor, b: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """The prelude's `fsp` of two maps."""
    return value(f'fsp(s.stage[1], s.stage[2], pool="{pool}")', {"s.stage[1]": a, "s.stage[2]": b})


def test_fsp_matches_loops_and_pools_the_larger_map() -> None:
    a = randn(2, 3, 4, 4)
    b = randn(2, 5, 2, 2)
    out = fsp(a, b)
    assert out.shape == (2, 3, 5)
    pooled = a.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # 4x4 -> 2x2
    for n, i, j in itertools.product(range(2), range(3), range(5)):
        want = sum(float(pooled[n, i, h, w] * b[n, j, h, w]) for h in range(2) for w in range(2))
        assert float(out[n, i, j]) == pytest.approx(want / 4, abs=1e-9)
    maxed = a.reshape(2, 3, 2, 2, 2, 2).amax(dim=(3, 5))
    close(fsp(a, b, pool="max"), torch.einsum("nihw,njhw->nij", maxed, b) / 4)
    # RepDistiller compute_fsp([bot, top]) gives [B, C_top, C_bot]: our transpose.
    c = randn(2, 5, 4, 4)
    rep = (a.unsqueeze(1).flatten(3) * c.unsqueeze(2).flatten(3)).mean(-1)
    close(fsp(a, c), rep.transpose(1, 2))


def test_channel_dist_normalises_each_channel() -> None:
    x = randn(2, 3, 2, 2)
    out = value("channel_dist(s.stage[1])", {"s.stage[1]": x}).flatten(2)
    assert out.shape == (2, 3, 4)
    for b, c in itertools.product(range(2), range(3)):
        v = x[b, c].reshape(-1)
        close(out[b, c], v / math.sqrt(sum(float(e) ** 2 for e in v)))


def test_margin_relu_per_channel() -> None:
    x = randn(2, 3, 2, 2)
    m = torch.tensor([-0.5, 0.0, -2.0], dtype=D64)
    out = tf.margin_relu(x, m)
    for c in range(3):
        close(out[:, c], x[:, c].clamp(min=float(m[c])))
    close(tf.margin_relu(x, -1.0), x.clamp(min=-1.0))
    with pytest.raises(ValueError):
        tf.margin_relu(x, torch.zeros(4))


def test_ofd_margin_matches_python_normal() -> None:
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.1]))
        bn.bias.copy_(torch.tensor([0.0, 0.3, -1.0, 1.0]))  # last: cdf(-10) < 0.001
    out = tf.ofd_margin(bn)
    normal = statistics.NormalDist()
    expected = []
    for s, m in zip(bn.weight.tolist(), bn.bias.tolist(), strict=True):
        s = abs(s)
        if normal.cdf(-m / s) > 0.001:
            pdf = math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
            expected.append(-s * pdf / normal.cdf(-m / s) + m)
        else:
            expected.append(-3 * s)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor(expected, dtype=torch.float64))
    assert (out < 0).all()


def test_binarize_and_stopgrad() -> None:
    x = randn(2, 3).requires_grad_()
    out = value("binarize(s.embedding)", {"s.embedding": x})
    assert out.dtype == D64
    assert out.tolist() == [[1.0 if v > 0 else 0.0 for v in row] for row in x.tolist()]
    s = tf.stopgrad(x)
    assert not s.requires_grad
    close(s, x.detach())


# --------------------------------------------------------------------------------------------
# Relation transforms
# --------------------------------------------------------------------------------------------


def test_similarity_row_normalised_gram() -> None:
    x = randn(4, 2, 3)
    flat = x.reshape(4, -1)
    g = torch.tensor(
        [
            [sum(float(a * b) for a, b in zip(flat[i], flat[j], strict=True)) for j in range(4)]
            for i in range(4)
        ],
        dtype=D64,
    )
    sim = value("similarity(s.stage[1])", {"s.stage[1]": x})
    close(sim, g / g.pow(2).sum(1, keepdim=True).sqrt())
    sim1 = value("similarity(s.stage[1], p=1)", {"s.stage[1]": x})
    close(sim1, g / g.abs().sum(1, keepdim=True))


def test_distances_match_cdist() -> None:
    x = randn(6, 5)
    d = torch.cdist(x, x)
    off = ~torch.eye(6, dtype=torch.bool)
    close(value("distances(s.embedding, normalize=false)", {"s.embedding": x}), d * off)
    out = value("distances(s.embedding)", {"s.embedding": x})
    close(out, d * off / d[off].mean())
    assert (out.diagonal() == 0).all()


def test_angles_match_triple_loop() -> None:
    x = randn(4, 3)
    out = value("angles(s.embedding)", {"s.embedding": x})
    assert out.shape == (4, 4, 4)

    def unit(v: torch.Tensor) -> torch.Tensor:
        n = math.sqrt(sum(float(e) ** 2 for e in v))
        return v / max(n, 1e-12)

    for i, j, k in itertools.product(range(4), repeat=3):
        want = float((unit(x[j] - x[i]) * unit(x[k] - x[i])).sum())
        assert float(out[i, j, k]) == pytest.approx(want, abs=1e-9)
    assert value("angles(s.stage[1])", {"s.stage[1]": randn(3, 2, 2, 2)}).shape == (3, 3, 3)


def test_pkt_affinity_is_row_normalised_shifted_cosine() -> None:
    x = randn(5, 7)
    cos = torch.tensor(
        [
            [float(F.cosine_similarity(x[i], x[j], dim=0, eps=0.0)) for j in range(5)]
            for i in range(5)
        ],
        dtype=D64,
    )
    k = (cos + 1) / 2
    # eps=1e-7 on the norms shifts the cosines by ~1e-7 relative; compare loosely, then exactly
    pkt = value("pkt_affinity(s.embedding)", {"s.embedding": x}).exp()
    close(pkt, k / k.sum(1, keepdim=True), tol=1e-5)
    pkt0 = value("pkt_affinity(s.embedding, eps=0)", {"s.embedding": x}).exp()
    close(pkt0, k / k.sum(1, keepdim=True))
    close(pkt.sum(1), torch.ones(5, dtype=D64))


# --------------------------------------------------------------------------------------------
# Registry, dtypes, gradients
# --------------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(tf.TRANSFORMS) == {
        "softmax", "log_softmax", "normalize", "pool", "interpolate",
        "mean_dist", "mean", "stopgrad",
        "margin_relu", "ofd_margin", "virtual_teacher",
    }  # fmt: skip
    for name, fn in tf.TRANSFORMS.items():
        assert fn.__doc__ and "Returns:" in fn.__doc__, name


SINGLE = ["softmax", "log_softmax", "normalize", "stopgrad"]
MAPS = ["pool"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved(dtype: torch.dtype) -> None:
    v = randn(4, 6, dtype=dtype)
    m = randn(4, 3, 4, 4, dtype=dtype)
    outs = [tf.TRANSFORMS[n](v) for n in SINGLE] + [tf.TRANSFORMS[n](m) for n in MAPS]
    outs += [
        fsp(m, m),
        tf.interpolate(m, 2),
        tf.mean_dist(tf.softmax(v), tf.softmax(v)),
        tf.mean(v, v, weights=[1.0, 2.0]),
        tf.margin_relu(m, torch.zeros(3)),
    ]
    for out in outs:
        assert out.dtype == dtype
        assert torch.isfinite(out).all()


GRADCHECKED = {
    "softmax": lambda x: tf.softmax(x, T=2.0),
    "mean_dist": lambda x: tf.mean_dist(tf.softmax(x), tf.softmax(2 * x), weights=[1.0, 2.0]),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKED))
def test_gradcheck(name: str) -> None:
    x = randn(3, 8).requires_grad_()
    assert torch.autograd.gradcheck(GRADCHECKED[name], (x,))


@pytest.mark.parametrize(
    ("call", "tap", "labels"),
    [
        ("distances(s.embedding)", "s.embedding", None),
        ("angles(s.embedding)", "s.embedding", None),
        ("binary_target(s.logits, T=2)", "s.logits", torch.tensor([0, 3, 1])),
    ],
)
def test_gradcheck_of_prelude_transforms(call: str, tap: str, labels) -> None:  # type: ignore[no-untyped-def]
    x = randn(3, 4).requires_grad_()  # every evaluation compiles the spec: a small input
    assert torch.autograd.gradcheck(lambda v: value(call, {tap: v}, labels), (x,), fast_mode=True)
