"""Losses against independent float64 computations and against the peer implementations.

The ``_ref_*`` helpers transcribe the reference code (RepDistiller, mdistiller, torchdistill)
the way it is written there, so a spec built from kdspec ops reproduces their numbers.
"""

from __future__ import annotations

import itertools
import math

import language_values as language
import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.ops import losses as python_losses
from kdspec.ops import transforms as tf
from kdspec.vocabulary import FUNCTIONS

D64 = torch.float64
# The losses as specs compute them: those of the prelude (kdspec/prelude/losses.kd) through the
# compiled language, the rest in Python; called as the Python functions were.
L = language.losses


# The transforms below are written in kdspec (the prelude): computed as a spec computes them.
def binary_target(z: torch.Tensor, y: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    return language.value(f"binary_target(s.logits, T={T})", {"s.logits": z}, labels=y)


def distances(x: torch.Tensor) -> torch.Tensor:
    return language.value("distances(s.embedding)", {"s.embedding": x})


# Inputs for the losses below. These functions live in the prelude (kdspec/prelude/*.kd, no
# Python); here are their formulas in plain torch.
def non_target(z: torch.Tensor, y: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    return F.log_softmax(z / T - 1000.0 * F.one_hot(y, z.shape[-1]).to(z.dtype), dim=-1)


def similarity(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    f = x.reshape(x.shape[0], -1)
    return F.normalize(f @ f.t(), p=p, dim=1)


def channel_dist(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(2), dim=2)


def attention(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.pow(2).mean(1).flatten(1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def close(actual: torch.Tensor, expected: torch.Tensor | float, tol: float | None = None) -> None:
    # inputs are O(1): an expected zero is held to the dtype's tolerance at scale 1
    assert_close(
        actual, expected, rtol=tol, scale=max(1.0, float(torch.as_tensor(expected).abs().max()))
    )


def randn(*shape: int, dtype: torch.dtype = D64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def probs(*shape: int) -> torch.Tensor:
    return torch.softmax(randn(*shape) * 2, dim=-1)


# --------------------------------------------------------------------------------------------
# KL / soft CE / CE
# --------------------------------------------------------------------------------------------


def test_kl_matches_explicit_sum_on_probabilities() -> None:
    p, q = probs(4, 6), probs(4, 6)
    total = 0.0
    elems = 0
    for i, j in itertools.product(range(4), range(6)):
        total += float(p[i, j]) * math.log(float(p[i, j]) / float(q[i, j]))
        elems += 1
    close(L.kl(p.log(), q.log()), total / 4)
    close(L.kl(p.log(), q.log(), reduction="sum"), total)
    close(L.kl(p.log(), q.log(), reduction="mean"), total / elems)
    with pytest.raises(ValueError, match="reduction"):
        L.kl(p.log(), q.log(), reduction="none")


def test_kl_with_eps_is_pkt_formula() -> None:
    p, q = probs(3, 5), probs(3, 5)
    eps = 1e-3
    want = sum(
        float(p[i, j]) * math.log((float(p[i, j]) + eps) / (float(q[i, j]) + eps))
        for i, j in itertools.product(range(3), range(5))
    )
    close(L.kl(p.log(), q.log(), eps=eps, reduction="sum"), want)


def test_kl_ignores_zero_teacher_mass_with_finite_gradients() -> None:
    t = torch.tensor([[0.0, float("-inf"), math.log(0.5)]], dtype=D64)
    t = torch.log_softmax(t, dim=1)
    s = tf.softmax(randn(1, 3)).requires_grad_()
    loss = L.kl(t, s)
    loss.backward()
    p = t.exp()
    sd = s.detach()
    want = sum(float(p[0, j] * (t[0, j] - sd[0, j])) for j in (0, 2))
    close(loss, want)
    assert torch.isfinite(s.grad).all()
    close(L.soft_ce(t, s), -sum(float(p[0, j] * sd[0, j]) for j in (0, 2)))


def test_soft_ce_is_kl_plus_teacher_entropy() -> None:
    p, q = probs(4, 6), probs(4, 6)
    ce = -(p * q.log()).sum() / 4
    close(L.soft_ce(p.log(), q.log()), ce)
    entropy = -(p * p.log()).sum() / 4
    close(L.soft_ce(p.log(), q.log()), L.kl(p.log(), q.log()) + entropy)


def test_hinton_kd_matches_repdistiller_distill_kl() -> None:
    zt, zs = randn(8, 10), randn(8, 10)
    temp = 4.0
    # RepDistiller DistillKL: kl_div(log p_s, p_t, size_average=False) * T^2 / B
    ref = (
        F.kl_div(F.log_softmax(zs / temp, dim=1), F.softmax(zt / temp, dim=1), reduction="sum")
        * temp**2
        / 8
    )
    close(L.kl(tf.softmax(zt, T=temp), tf.softmax(zs, T=temp)) * temp**2, ref)


def test_tfkd_reg_matches_yuan_et_al() -> None:
    zs = randn(6, 5)
    labels = torch.randint(0, 5, (6,))
    temp = 20.0
    teacher_soft = torch.full((6, 5), 0.01 / 4, dtype=D64)
    teacher_soft[torch.arange(6), labels] = 0.99
    # nn.KLDivLoss()'s default reduction "mean" averages over all B*K elements (written out here
    # to avoid torch's deprecation warning); the student has no temperature.
    pointwise = F.kl_div(
        F.log_softmax(zs, dim=1), F.softmax(teacher_soft / temp, dim=1), reduction="none"
    )
    ref = pointwise.sum() / pointwise.numel()
    vt = tf.virtual_teacher(labels, 5, correct=0.99, dtype=D64)
    close(L.kl(tf.softmax(vt, T=temp), tf.softmax(zs), reduction="mean"), ref)


def test_cross_entropy_matches_manual() -> None:
    z = randn(5, 4)
    y = torch.randint(0, 4, (5,))
    logp = z - torch.log(torch.exp(z).sum(1, keepdim=True))
    close(L.cross_entropy(z, y), -logp[torch.arange(5), y].mean())
    eps = 0.1
    smooth = (1 - eps) * -logp[torch.arange(5), y] + eps * -logp.mean(1)
    close(L.cross_entropy(z, y, label_smoothing=eps), smooth.mean())
    tokens = randn(2, 3, 4)
    ty = torch.randint(0, 4, (2, 3))
    close(L.cross_entropy(tokens, ty), F.cross_entropy(tokens.reshape(6, 4), ty.reshape(6)))


# --------------------------------------------------------------------------------------------
# DKD
# --------------------------------------------------------------------------------------------


def test_dkd_identity_kd_equals_tckd_plus_weighted_nckd() -> None:
    """KD = TCKD + (1 - p_gt^T) NCKD, per sample (Zhao et al. CVPR'22, Eq. 6)."""
    zt, zs = randn(6, 10) * 3, randn(6, 10) * 3
    labels = torch.randint(0, 10, (6,))
    temp = 2.0
    for i in range(6):
        t, s, y = zt[i : i + 1], zs[i : i + 1], labels[i : i + 1]
        kd = L.kl(tf.softmax(t, T=temp), tf.softmax(s, T=temp), reduction="sum")
        tckd = L.kl(binary_target(t, y, T=temp), binary_target(s, y, T=temp))
        nckd = L.kl(non_target(t, y, T=temp), non_target(s, y, T=temp))
        p_gt = torch.softmax(t / temp, dim=1)[0, y[0]]
        close(kd, tckd + (1 - p_gt) * nckd, tol=1e-9)


def _ref_mdistiller_dkd(zs, zt, target, alpha, beta, temp):  # type: ignore[no-untyped-def]
    gt = torch.zeros_like(zs).scatter_(1, target.unsqueeze(1), 1).bool()
    other = ~gt
    ps, pt = F.softmax(zs / temp, dim=1), F.softmax(zt / temp, dim=1)

    def cat_mask(p: torch.Tensor) -> torch.Tensor:
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], 1)

    ps, pt = cat_mask(ps), cat_mask(pt)
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * temp**2 / target.shape[0]
    pt2 = F.softmax(zt / temp - 1000.0 * gt, dim=1)
    ls2 = F.log_softmax(zs / temp - 1000.0 * gt, dim=1)
    nckd = F.kl_div(ls2, pt2, reduction="sum") * temp**2 / target.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dkd_matches_mdistiller(dtype: torch.dtype) -> None:
    zt, zs = randn(8, 100, dtype=dtype) * 3, randn(8, 100, dtype=dtype) * 3
    y = torch.randint(0, 100, (8,))
    temp, alpha, beta = 4.0, 1.0, 8.0
    tckd = L.kl(binary_target(zt, y, T=temp), binary_target(zs, y, T=temp))
    nckd = L.kl(non_target(zt, y, T=temp), non_target(zs, y, T=temp))
    ours = (alpha * tckd + beta * nckd) * temp**2
    close(ours, _ref_mdistiller_dkd(zs, zt, y, alpha, beta, temp), tol=1e-5)


# --------------------------------------------------------------------------------------------
# Elementwise losses
# --------------------------------------------------------------------------------------------


def test_mse_l1_smooth_l1_reductions() -> None:
    t, s = randn(4, 3, 2), randn(4, 3, 2) * 2
    d = (s - t).reshape(-1).tolist()
    sq = [v * v for v in d]
    ab = [abs(v) for v in d]
    hub = [0.5 * v * v if abs(v) < 1 else abs(v) - 0.5 for v in d]
    for fn, vals in ((L.mse, sq), (L.l1, ab), (L.smooth_l1, hub)):
        close(fn(t, s), sum(vals) / len(vals))
        close(fn(t, s, reduction="sum"), sum(vals))
        close(fn(t, s, reduction="batchmean"), sum(vals) / 4)
    hub2 = [0.5 * v * v / 2 if abs(v) < 2 else abs(v) - 1.0 for v in d]
    close(L.smooth_l1(t, s, beta=2.0), sum(hub2) / len(hub2))
    with pytest.raises(ValueError, match="shape"):
        L.mse(t, s[:, :2])


def test_cosine_flattened_and_per_token() -> None:
    t, s = randn(3, 2, 4), randn(3, 2, 4)
    want = 0.0
    for i in range(3):
        a, b = t[i].reshape(-1), s[i].reshape(-1)
        want += 1 - float((a * b).sum() / (a.norm() * b.norm()))
    close(L.cosine(t, s), want / 3)
    # Per token (DistilBERT): every row a sample.
    per_token = (1 - F.cosine_similarity(t, s, dim=-1)).mean()
    close(language.loss("cosine", t, s, knowledge="rows"), per_token)
    close(L.cosine(t, t), 0.0)


def test_lp_variants() -> None:
    t, s = randn(4, 3, 5), randn(4, 3, 5)
    d = s - t
    close(L.lp(t, s), d.pow(2).sum() / 4)
    per = [math.sqrt(sum(float(v) ** 2 for v in d[i].reshape(-1))) for i in range(4)]
    close(L.lp(t, s, squared=False), sum(per) / 4)
    close(L.lp(t, s, squared=False, reduction="mean"), sum(per) / 4)
    close(L.lp(t, s, squared=False, reduction="sum"), sum(per))
    close(L.lp(t, s, p=1.0), d.abs().sum() / 4)
    close(L.lp(t, s, p=3.0), d.abs().pow(3).sum() / 4)
    # torchdistill FSPLoss: (G_s - G_t).norm(dim=1).sum() / B
    close(L.lp(t, s, dim=1, squared=False), d.norm(dim=1).sum() / 4)
    close(L.lp(t, s, dim=(1, 2), squared=False), sum(per) / 4)


def test_frobenius_relation_and_feature() -> None:
    # A relation between samples (axes batch, batch2) is divided by B^2, anything else by B,
    # even a [B, B] embedding.
    xt, xs = randn(5, 3), randn(5, 3)
    want = ((similarity(xt) - similarity(xs)) ** 2).sum() / 25
    close(language.loss("frobenius", xt, xs, tap="embedding", knowledge="similarity"), want)
    t, s = randn(5, 5), randn(5, 5)
    close(L.frobenius(t, s), ((t - s) ** 2).sum() / 5)
    f, g = randn(3, 4, 2, 2), randn(3, 4, 2, 2)
    close(L.frobenius(f, g), ((f - g) ** 2).sum() / 3)


def test_sp_matches_repdistiller_and_torchdistill() -> None:
    ft, fs = randn(6, 4, 3, 3), randn(6, 8, 2, 2)

    def ref(f_s, f_t, p):  # type: ignore[no-untyped-def]
        gs = F.normalize(f_s.view(6, -1) @ f_s.view(6, -1).t(), p=p)
        gt = F.normalize(f_t.view(6, -1) @ f_t.view(6, -1).t(), p=p)
        return ((gt - gs) ** 2).view(-1, 1).sum(0) / 36

    for p in (2.0, 1.0):
        sim = f"similarity(p={p})"
        close(language.loss("frobenius", ft, fs, knowledge=sim), ref(fs, ft, p)[0])


# --------------------------------------------------------------------------------------------
# MMD, Pearson, hinge, partial L2, VID, HCL, InfoNCE
# --------------------------------------------------------------------------------------------


def _kernel_ref(a: torch.Tensor, b: torch.Tensor, kind: str, gamma: float) -> float:
    if kind == "poly":
        return float((a * b).sum()) ** 2
    if kind == "linear":
        return float((a * b).sum())
    return math.exp(-gamma * float(((a - b) ** 2).sum()))


@pytest.mark.parametrize("kind", ["poly", "linear", "rbf"])
def test_mmd_matches_loops(kind: str) -> None:
    t, s = randn(2, 3, 4), randn(2, 2, 4)
    want = 0.0
    for b in range(2):

        def avg(x: torch.Tensor, y: torch.Tensor, b: int = b) -> float:
            vals = [
                _kernel_ref(x[b, i], y[b, j], kind, 0.5)
                for i in range(x.shape[1])
                for j in range(y.shape[1])
            ]
            return sum(vals) / len(vals)

        want += avg(t, t) + avg(s, s) - 2 * avg(s, t)
    close(L.mmd(t, s, kernel=kind, gamma=0.5), want / 2)
    with pytest.raises(ValueError):
        L.mmd(t, s, kernel="cubic")


def test_nst_matches_repdistiller() -> None:
    ft, fs = randn(2, 4, 3, 3), randn(2, 6, 3, 3)

    def poly(a, b):  # type: ignore[no-untyped-def]
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    nt = F.normalize(ft.view(2, 4, -1), dim=2)
    ns = F.normalize(fs.view(2, 6, -1), dim=2)
    ref = poly(nt, nt).mean() + poly(ns, ns).mean() - 2 * poly(ns, nt).mean()
    close(L.mmd(channel_dist(ft), channel_dist(fs)), ref)


def test_pearson_matches_manual_correlation() -> None:
    t, s = probs(5, 7), probs(5, 7)

    def corr(a: list[float], b: list[float]) -> float:
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
        va = math.sqrt(sum((x - ma) ** 2 for x in a))
        vb = math.sqrt(sum((y - mb) ** 2 for y in b))
        return cov / (va * vb)

    inter = sum(corr(t[i].tolist(), s[i].tolist()) for i in range(5)) / 5
    intra = sum(corr(t[:, j].tolist(), s[:, j].tolist()) for j in range(7)) / 7
    close(L.pearson(t, s), 1 - inter)
    close(L.pearson(t, s, dim=0), 1 - intra)
    close(L.pearson(t, t), 0.0)


def test_dist_matches_torchdistill() -> None:
    zt, zs = randn(8, 10), randn(8, 10)
    tau = 2.0
    ys, yt = (zs / tau).softmax(dim=1), (zt / tau).softmax(dim=1)

    def pc(a, b):  # type: ignore[no-untyped-def]
        return F.cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps=1e-8)

    inter = tau**2 * (1 - pc(ys, yt).mean())
    intra = tau**2 * (1 - pc(ys.t(), yt.t()).mean())
    pt, ps = tf.softmax(zt, T=tau).exp(), tf.softmax(zs, T=tau).exp()
    close(tau**2 * L.pearson(pt, ps, dim=1), inter)
    close(tau**2 * L.pearson(pt, ps, dim=0), intra)


def test_ab_hinge_matches_elementwise_rule() -> None:
    t, s = randn(3, 2, 2, 2), randn(3, 2, 2, 2) * 2
    m = 1.0
    want = 0.0
    for sv, tv in zip(s.reshape(-1).tolist(), t.reshape(-1).tolist(), strict=True):
        if tv <= 0 and sv > -m:
            want += (sv + m) ** 2
        elif tv > 0 and sv <= m:
            want += (sv - m) ** 2
    close(L.ab_hinge(t, s), want / 3)
    close(L.ab_hinge(t, s, reduction="sum"), want)
    close(L.ab_hinge((t > 0).to(t.dtype), s), want / 3)


def test_partial_l2_and_ofd_equivalence_with_mdistiller() -> None:
    t, s = randn(4, 3, 2, 2), randn(4, 3, 2, 2)
    margin = torch.tensor([-0.5, -1.0, -0.2], dtype=D64)
    tm = tf.margin_relu(t, margin)
    want = 0.0
    for sv, tv in zip(s.reshape(-1).tolist(), tm.reshape(-1).tolist(), strict=True):
        if sv > tv or tv > 0:
            want += (sv - tv) ** 2
    close(language.loss("partial_l2", tm, s), want / 4)
    # mdistiller OFD feat_loss on the raw teacher map.
    m = margin.view(1, -1, 1, 1)
    ref = (
        (
            (s - m) ** 2 * ((s > m) & (t <= m))
            + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0))
            + (s - t) ** 2 * (t > 0)
        )
        .abs()
        .mean(dim=0)
        .sum()
    )
    close(language.loss("partial_l2", tm, s), ref)


def test_gaussian_nll_tuple_and_separate() -> None:
    t, mu = randn(2, 3, 2, 2), randn(2, 3, 2, 2)
    var = torch.rand(1, 3, 1, 1, dtype=D64) + 0.5
    want = 0.0
    for b, c, h, w in itertools.product(range(2), range(3), range(2), range(2)):
        v = float(var[0, c, 0, 0])
        want += 0.5 * ((float(mu[b, c, h, w]) - float(t[b, c, h, w])) ** 2 / v + math.log(v))
    close(L.gaussian_nll(t, mu, var), want / 24)
    close(L.gaussian_nll(t, (mu, var)), want / 24)
    with pytest.raises(ValueError):
        L.gaussian_nll(t, mu)


def test_hcl_matches_reviewkd_with_block_means() -> None:
    t, s = randn(2, 3, 8, 8), randn(2, 3, 8, 8)

    def blocks(x: torch.Tensor, k: int) -> torch.Tensor:
        n = 8 // k
        return x.reshape(2, 3, k, n, k, n).mean(dim=(3, 5))

    def m(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a - b) ** 2).mean()

    want = (
        m(s, t) + 0.5 * m(blocks(s, 4), blocks(t, 4)) + 0.25 * m(blocks(s, 2), blocks(t, 2))
        + 0.125 * m(blocks(s, 1), blocks(t, 1))
    ) / (1 + 0.5 + 0.25 + 0.125)  # fmt: skip
    close(L.hcl(t, s), want)
    # Levels >= H are skipped and do not halve the weight (H = 4: level 4 skipped).
    t4, s4 = t[..., :4, :4], s[..., :4, :4]

    def p2(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))

    def p1(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)

    want4 = (m(s4, t4) + 0.5 * m(p2(s4), p2(t4)) + 0.25 * m(p1(s4), p1(t4))) / 1.75
    close(L.hcl(t4, s4), want4)


def test_info_nce_matches_loop() -> None:
    t, s = randn(4, 6), randn(4, 6)
    temp = 0.5
    zt = [v / v.norm() for v in t]
    zs = [v / v.norm() for v in s]
    want = 0.0
    for i in range(4):
        logits = [float((zs[i] * zt[j]).sum()) / temp for j in range(4)]
        want += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    close(L.info_nce(t, s, T=temp), want / 4)


# --------------------------------------------------------------------------------------------
# Method pipelines against their reference implementations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pkt_pipeline_matches_torchdistill(dtype: torch.dtype) -> None:
    ft, fs = randn(16, 32, dtype=dtype), randn(16, 24, dtype=dtype)
    eps = 1e-7

    def ref(student, teacher):  # type: ignore[no-untyped-def]
        ns = student / (torch.sqrt(torch.sum(student**2, dim=1, keepdim=True)) + eps)
        nt = teacher / (torch.sqrt(torch.sum(teacher**2, dim=1, keepdim=True)) + eps)
        ss, ts = (ns @ ns.t() + 1.0) / 2.0, (nt @ nt.t() + 1.0) / 2.0
        ss, ts = ss / ss.sum(1, keepdim=True), ts / ts.sum(1, keepdim=True)
        return torch.mean(ts * torch.log((ts + eps) / (ss + eps)))

    ours = language.loss(
        "kl(eps=1e-7, reduction=mean)", ft, fs, tap="embedding", knowledge="pkt_affinity"
    )
    tol = 1e-6 if dtype == D64 else 1e-5
    close(ours, ref(fs, ft), tol=tol)


def test_rkd_pipeline_matches_mdistiller() -> None:
    ft, fs = randn(8, 16), randn(8, 12)

    def pdist(e):  # type: ignore[no-untyped-def]
        sq = e.pow(2).sum(1)
        res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    td, sd = pdist(ft), pdist(fs)
    ref_d = F.smooth_l1_loss(sd / sd[sd > 0].mean(), td / td[td > 0].mean())
    close(L.smooth_l1(distances(ft), distances(fs)), ref_d)

    def ang(e):  # type: ignore[no-untyped-def]
        n = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(n, n.transpose(1, 2)).view(-1)

    angle_loss = language.loss("smooth_l1", ft, fs, tap="embedding", knowledge="angles")
    close(angle_loss, F.smooth_l1_loss(ang(fs), ang(ft)))


def test_at_pipeline_matches_repdistiller_and_torchdistill_paper_mode() -> None:
    ft, fs = randn(4, 8, 4, 4), randn(4, 3, 4, 4)

    def at(f):  # type: ignore[no-untyped-def]
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    close(L.mse(attention(ft), attention(fs)), (at(fs) - at(ft)).pow(2).mean())

    def at_paper(f):  # type: ignore[no-untyped-def]
        return F.normalize(f.pow(2).sum(1).flatten(1))

    paper = torch.norm(at_paper(fs) - at_paper(ft), dim=1).sum() / 4
    close(L.lp(attention(ft), attention(fs), squared=False), paper)


def test_fsp_pipeline_matches_torchdistill() -> None:
    t1, t2 = randn(2, 3, 4, 4), randn(2, 5, 2, 2)
    s1, s2 = randn(2, 3, 4, 4), randn(2, 5, 2, 2)

    def fsp_td(a, b):  # type: ignore[no-untyped-def]
        a = F.adaptive_max_pool2d(a, (2, 2)).flatten(2)
        return torch.matmul(a, b.flatten(2).transpose(1, 2)) / 4

    ref = (fsp_td(s1, s2) - fsp_td(t1, t2)).norm(dim=1).sum() / 2

    def fsp(a, b):  # type: ignore[no-untyped-def]
        call = 'fsp(s.stage[1], s.stage[2], pool="max")'
        return language.value(call, {"s.stage[1]": a, "s.stage[2]": b})

    ours = L.lp(fsp(t1, t2), fsp(s1, s2), dim=1, squared=False)
    close(ours, ref)


# --------------------------------------------------------------------------------------------
# Registry, dtypes, gradients
# --------------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(python_losses.LOSSES) == set()  # every loss is a prelude def or learned
    for name, fn in python_losses.LOSSES.items():
        assert fn.__doc__ and "Returns:" in fn.__doc__, name


def _all_losses(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    v1, v2 = randn(4, 6, dtype=dtype), randn(4, 6, dtype=dtype)
    m1, m2 = randn(4, 3, 4, 4, dtype=dtype), randn(4, 3, 4, 4, dtype=dtype)
    var = torch.ones(1, 3, 1, 1, dtype=dtype)
    return {
        "kl": L.kl(tf.softmax(v1), tf.softmax(v2)),
        "soft_ce": L.soft_ce(tf.softmax(v1), tf.softmax(v2)),
        "cross_entropy": L.cross_entropy(v2, torch.tensor([0, 1, 2, 3])),
        "mse": L.mse(m1, m2),
        "l1": L.l1(m1, m2),
        "smooth_l1": L.smooth_l1(m1, m2),
        "cosine": L.cosine(m1, m2),
        "lp": L.lp(m1, m2),
        "frobenius": language.loss("frobenius", m1, m2, knowledge="similarity"),
        "mmd": L.mmd(channel_dist(m1), channel_dist(m2)),
        "pearson": L.pearson(v1.softmax(1), v2.softmax(1)),
        "ab_hinge": L.ab_hinge(m1, m2),
        "partial_l2": L.partial_l2(m1, m2),
        "gaussian_nll": L.gaussian_nll(m1, (m2, var)),
        "hcl": L.hcl(m1, m2),
        "info_nce": L.info_nce(v1, v2),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_loss_is_a_finite_scalar_in_dtype(dtype: torch.dtype) -> None:
    outs = _all_losses(dtype)
    library = {n for n, f in FUNCTIONS.items() if f.category == "loss" and not f.learned}
    assert set(outs) == library
    for name, out in outs.items():
        assert out.shape == (), name
        assert out.dtype == dtype, name
        assert torch.isfinite(out), name


GRADCHECKED = {
    "kl": lambda t, s: L.kl(tf.softmax(t), tf.softmax(s)),
    "kl_eps": lambda t, s: L.kl(tf.softmax(t), tf.softmax(s), eps=1e-3, reduction="mean"),
    "soft_ce": lambda t, s: L.soft_ce(tf.softmax(t), tf.softmax(s)),
    "lp": lambda t, s: L.lp(t, s, p=3.0, squared=False),
    "mmd": lambda t, s: L.mmd(t.view(3, 2, 4), s.view(3, 2, 4), kernel="rbf"),
    "pearson": lambda t, s: L.pearson(t, s, dim=0),
    "hcl": lambda t, s: L.hcl(t.view(3, 2, 2, 2), s.view(3, 2, 2, 2)),
    "info_nce": L.info_nce,
    "gaussian_nll": lambda t, s: L.gaussian_nll(t, s, s.pow(2) + 0.5),
    "cosine": L.cosine,
}


@pytest.mark.parametrize("name", sorted(GRADCHECKED))
def test_gradcheck(name: str) -> None:
    t = randn(3, 8).requires_grad_()
    s = randn(3, 8).requires_grad_()
    assert torch.autograd.gradcheck(GRADCHECKED[name], (t, s))
