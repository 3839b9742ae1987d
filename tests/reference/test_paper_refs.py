"""The references of ``paper_refs.py`` against the official code they cite.

Each ``official_*`` function below transcribes the authors' (or TRL's / DistiLLM's) code
statement by statement, with ``.cuda()`` dropped and float32 casts replaced by float64; the
reference is written differently (masking instead of reshaping, log space instead of
probabilities, ...), so agreement on loss and gradients (1e-6 relative, float64) checks both.
"""

from __future__ import annotations

import numpy as np
import paper_refs as ref
import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close
from torch import Tensor, nn

B, K, L, V = 8, 10, 5, 12
RTOL = 1e-6


def rand(*shape: int, seed: int, scale: float = 2.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(True)


def labels(n: int = B, seed: int = 7) -> Tensor:
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


def token_mask(seed: int = 9) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, L, generator=g) > 0.3
    keep[:, 0] = True
    return keep


def same(a: Tensor, b: Tensor, wrt: list[Tensor]) -> None:
    """Equal values and equal gradients with respect to every tensor in ``wrt``."""
    assert_close(a, b, rtol=RTOL)
    ga = torch.autograd.grad(a, wrt, retain_graph=True)
    gb = torch.autograd.grad(b, wrt, retain_graph=True)
    for x, y in zip(ga, gb, strict=True):
        assert_close(x, y, rtol=RTOL)


# --- official code, transcribed ---------------------------------------------------------------


def official_nkd(logit_s: Tensor, logit_t: Tensor, gt_label: Tensor, temp: float, gamma: float):
    """yzd-v/cls_KD ``NKDLoss.forward`` (revision with ``scatter_(1, label, 0)``)."""
    label = gt_label.view(len(gt_label), 1)
    N, _ = logit_s.shape
    s_i = F.log_softmax(logit_s, dim=1)
    t_i = F.softmax(logit_t, dim=1)
    s_t = torch.gather(s_i, 1, label)
    t_t = torch.gather(t_i, 1, label).detach()
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
    logit_s = logit_s[mask].reshape(N, -1)
    logit_t = logit_t[mask].reshape(N, -1)
    S_i = F.log_softmax(logit_s / temp, dim=1)
    T_i = F.softmax(logit_t / temp, dim=1)
    loss_non = (T_i * S_i).sum(dim=1).mean()
    loss_non = -gamma * (temp**2) * loss_non
    return loss_t + loss_non


def official_wsl(logit_s: Tensor, logit_t: Tensor, gt_label: Tensor, temp: float):
    """cls_KD ``WSLDLoss.forward`` without ``alpha`` (the authors' ``WSLDistiller`` soft term)."""
    t_soft_label = F.softmax(logit_t / temp, dim=1)
    softmax_loss = -torch.sum(t_soft_label * F.log_softmax(logit_s / temp, dim=1), 1, keepdim=True)
    log_softmax_s = F.log_softmax(logit_s.detach(), dim=1)
    log_softmax_t = F.log_softmax(logit_t.detach(), dim=1)
    one_hot_label = F.one_hot(gt_label, num_classes=K).double()
    softmax_loss_s = -torch.sum(one_hot_label * log_softmax_s, 1, keepdim=True)
    softmax_loss_t = -torch.sum(one_hot_label * log_softmax_t, 1, keepdim=True)
    focal_weight = softmax_loss_s / (softmax_loss_t + 1e-7)
    focal_weight = torch.max(focal_weight, torch.zeros(1, dtype=torch.float64))
    focal_weight = 1 - torch.exp(-focal_weight)
    return (temp**2) * torch.mean(focal_weight * softmax_loss)


def official_mlkd_one_view(logits_student: Tensor, logits_teacher: Tensor, temps):
    """Jin-Ying/Multi-Level-Logit-Distillation ``KD_ours``: the weak-view ``loss_kd``, ``loss_cc``
    and ``loss_bc`` parts (``kd_loss`` / ``cc_loss`` / ``bc_loss`` with ``reduce=True``)."""

    def kd_loss(s, t, temperature):
        log_pred_student = F.log_softmax(s / temperature, dim=1)
        pred_teacher = F.softmax(t / temperature, dim=1)
        loss = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
        return loss * temperature**2

    def cc_loss(s, t, temperature):
        _, class_num = t.shape
        ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
        return ((pt.transpose(1, 0) @ pt - ps.transpose(1, 0) @ ps) ** 2).sum() / class_num

    def bc_loss(s, t, temperature):
        batch_size, _ = t.shape
        ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
        return ((pt @ pt.transpose(1, 0) - ps @ ps.transpose(1, 0)) ** 2).sum() / batch_size

    pred_teacher_weak = F.softmax(logits_teacher.detach(), dim=1)
    confidence = pred_teacher_weak.max(dim=1)[0].detach()
    conf_thresh = np.percentile(confidence.numpy().flatten(), 50)
    mask = confidence.le(conf_thresh).bool()
    class_confidence = torch.sum(pred_teacher_weak, dim=0).detach()
    class_conf_thresh = np.percentile(class_confidence.numpy().flatten(), 50)
    class_conf_mask = class_confidence.le(class_conf_thresh).bool()
    total = 0.0
    for T in temps:
        total = total + (kd_loss(logits_student, logits_teacher, T) * mask).mean()
        total = total + (cc_loss(logits_student, logits_teacher, T) * class_conf_mask).mean()
        total = total + (bc_loss(logits_student, logits_teacher, T) * mask).mean()
    return total, mask, class_conf_mask


def official_ttm(y_s: Tensor, y_t: Tensor, l: float) -> Tensor:  # noqa: E741 (the authors' name)
    """The official ``TTM.forward``."""
    p_s = F.log_softmax(y_s, dim=1)
    p_t = torch.pow(torch.softmax(y_t, dim=1), l)
    norm = torch.sum(p_t, dim=1)
    p_t = p_t / norm.unsqueeze(1)
    return torch.mean(torch.sum(F.kl_div(p_s, p_t, reduction="none"), dim=1))


def official_gjsd(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0):
    """TRL ``GKDTrainer.generalized_jsd_loss`` (logsumexp mixture), ``reduction="batchmean"``."""
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack(
                [student_log_probs + torch.log(1 - beta), teacher_log_probs + torch.log(beta)]
            ),
            dim=0,
        )
        kl_teacher = F.kl_div(
            mixture_log_probs, teacher_log_probs, reduction="none", log_target=True
        )
        kl_student = F.kl_div(
            mixture_log_probs, student_log_probs, reduction="none", log_target=True
        )
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    if labels is not None:
        mask = labels != -100
        jsd = jsd[mask]
        return jsd.sum() / mask.sum()
    return jsd.sum() / (jsd.size(0) * jsd.size(1))


def _distillm_mask(labels: Tensor) -> Tensor:
    return (labels != -100).int()


def official_reverse_kl(logits, teacher_logits, labels):
    """DistiLLM ``reverse_kl``."""
    student_probs = F.softmax(logits, dim=-1)
    student_logprobs = F.log_softmax(logits, dim=-1)
    teacher_logprobs = F.log_softmax(teacher_logits, dim=-1)
    inf_mask = torch.isinf(teacher_logits) | torch.isinf(logits)
    prod_probs = torch.masked_fill(student_probs * teacher_logprobs, inf_mask, 0)
    prod_probs = prod_probs - torch.masked_fill(student_probs * student_logprobs, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    mask = _distillm_mask(labels)
    return -torch.sum(x * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


def official_tv_distance(logits, teacher_logits, labels):
    """DistiLLM ``tv_distance``."""
    teacher_probs = F.softmax(teacher_logits, dim=-1)
    student_probs = F.softmax(logits, dim=-1)
    mask = _distillm_mask(labels)
    inf_mask = torch.isinf(logits) | torch.isinf(teacher_logits)
    prod_probs = 0.5 * torch.masked_fill(torch.abs(teacher_probs - student_probs), inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    return torch.sum(x * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


def official_skewed_forward_kl(logits, teacher_logits, labels, lam=0.1):
    """DistiLLM ``skewed_forward_kl`` (a cross-entropy: KL + H(p_t))."""
    teacher_probs = F.softmax(teacher_logits, dim=-1)
    student_probs = F.softmax(logits, dim=-1)
    mixed_logprobs = torch.log(lam * teacher_probs + (1 - lam) * student_probs)
    mask = _distillm_mask(labels)
    inf_mask = torch.isinf(logits) | torch.isinf(teacher_logits)
    prod_probs = torch.masked_fill(teacher_probs * mixed_logprobs, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    return -torch.sum(x * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


def official_skewed_reverse_kl(logits, teacher_logits, labels, lam=0.1):
    """DistiLLM ``skewed_reverse_kl``."""
    teacher_probs = F.softmax(teacher_logits, dim=-1)
    student_probs = F.softmax(logits, dim=-1)
    mixed_probs = (1 - lam) * teacher_probs + lam * student_probs
    student_logprobs = F.log_softmax(logits, dim=-1)
    mixed_logprobs = torch.log(mixed_probs)
    mask = _distillm_mask(labels)
    inf_mask = torch.isinf(logits) | torch.isinf(teacher_logits)
    prod_probs = torch.masked_fill(student_probs * mixed_logprobs, inf_mask, 0)
    prod_probs = prod_probs - torch.masked_fill(student_probs * student_logprobs, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    return -torch.sum(x * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "gamma"), [(1.0, 1.5), (4.0, 0.5)])
def test_nkd_matches_cls_kd(T: float, gamma: float) -> None:
    t, s, y = rand(B, K, seed=1), rand(B, K, seed=2), labels()
    same(ref.nkd(t, s, y, T=T, gamma=gamma), official_nkd(s, t, y, T, gamma), [s, t])


def test_nkd_target_term_is_student_ce_weighted_by_the_teacher() -> None:
    """With gamma = 0 only ``-p_t[y] log p_s[y]`` is left; a one-hot teacher makes it the CE."""
    s, y = rand(B, K, seed=2), labels()
    t = 50.0 * F.one_hot(y, K).double()
    assert_close(ref.nkd(t, s, y, gamma=0.0), ref.ce(s, y), rtol=1e-12)


def test_wsl_matches_the_official_soft_term() -> None:
    t, s, y = rand(B, K, seed=3), rand(B, K, seed=4), labels()
    same(ref.wsl(t, s, y, T=2.0), official_wsl(s, t, y, 2.0), [s, t])


def test_wsl_weight_uses_no_gradient_and_is_zero_where_the_student_is_right() -> None:
    """A student with CE 0 on a sample gets weight 1 - exp(0) = 0 for it."""
    y = labels()
    s = (30.0 * F.one_hot(y, K).double()).requires_grad_(True)
    t = rand(B, K, seed=5)
    loss = ref.wsl(t, s, y)
    assert float(loss) < 1e-9
    (g,) = torch.autograd.grad(loss, [s])
    assert float(g.abs().max()) < 1e-9


def test_mlkd_with_the_code_masks_matches_the_official_weak_view() -> None:
    t, s = rand(B, K, seed=6), rand(B, K, seed=7)
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    official, mask, class_mask = official_mlkd_one_view(s, t, temps)
    w = mask.double().mean().expand(B)
    c = class_mask.double().mean().expand(K)
    same(ref.mlkd(t, s, temps, sample_weight=w, class_weight=c), official, [s])


def test_mlkd_terms_vanish_for_equal_predictions_and_weights_scale_their_levels() -> None:
    t, s = rand(B, K, seed=8), rand(B, K, seed=9)
    assert float(ref.mlkd(t, t.detach().clone())) == pytest.approx(0.0, abs=1e-12)
    ones_b, ones_k = torch.ones(B, dtype=torch.float64), torch.ones(K, dtype=torch.float64)
    full = ref.mlkd(t, s)
    assert_close(ref.mlkd(t, s, sample_weight=ones_b, class_weight=ones_k), full)
    class_only = ref.mlkd(t, s, sample_weight=0 * ones_b)
    sample_only = ref.mlkd(t, s, class_weight=0 * ones_k)
    assert_close(class_only + sample_only, full)
    assert float(class_only) > 0 and float(sample_only) > 0
    assert_close(ref.mlkd(t, s, sample_weight=2 * ones_b, class_weight=0 * ones_k), 2 * sample_only)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_ctkd_reverses_the_temperature_gradient_only(lam: float) -> None:
    t, s = rand(B, K, seed=10), rand(B, K, seed=11)
    theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
    loss = ref.ctkd(t, s, theta, lam)
    # Forward: plain KD at T = 1 + 20 sigmoid(theta).
    T = 1.0 + 20.0 * torch.sigmoid(theta)
    plain = ref.kd(t, s, T)
    same(loss, plain, [s])
    (g_theta,) = torch.autograd.grad(loss, [theta], retain_graph=True)
    (g_plain,) = torch.autograd.grad(plain, [theta])
    assert_close(g_theta, -lam * g_plain, rtol=RTOL)


def test_ctkd_matches_the_official_distill_kl() -> None:
    t, s = rand(B, K, seed=12), rand(B, K, seed=13)
    theta = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
    temp = 1.0 + 20.0 * torch.sigmoid(ref.gradient_reversal(theta, 0.5))
    official = (
        nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)
        )
        * temp
        * temp
    )
    same(ref.ctkd(t, s, theta, 0.5), official, [s, theta])


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_ttm_matches_the_official_loss(T: float) -> None:
    t, s = rand(B, K, seed=14), rand(B, K, seed=15)
    same(ref.ttm(t, s, T=T), official_ttm(s, t, 1.0 / T), [s, t])


def test_ttm_at_t1_is_kd_at_t1_and_differs_from_kd_elsewhere() -> None:
    t, s = rand(B, K, seed=16), rand(B, K, seed=17)
    assert_close(ref.ttm(t, s, 1.0), ref.kd(t, s, 1.0), rtol=1e-12)
    assert abs(float(ref.ttm(t, s, 4.0)) - float(ref.kd(t, s, 4.0))) > 1e-3


@pytest.mark.parametrize(("hs", "ht"), [(4, 4), (8, 4), (2, 4)])
def test_simkd_mse_on_the_projection_and_the_teacher_classifier(hs: int, ht: int) -> None:
    torch.manual_seed(0)
    proj = nn.Conv2d(6, 5, kernel_size=1).double()
    head = nn.Linear(5, K).double()
    fs, ft = rand(B, 6, hs, hs, seed=18), rand(B, 5, ht, ht, seed=19)
    loss, logits = ref.simkd(ft, fs, proj, head)
    side = min(hs, ht)
    src = F.adaptive_avg_pool2d(fs, side) if hs > side else fs
    tgt = F.adaptive_avg_pool2d(ft, side) if ht > side else ft
    same(loss, nn.MSELoss()(proj(src), tgt), [fs, proj.weight])
    assert_close(logits, head(F.adaptive_avg_pool2d(proj(src), 1).flatten(1)))


# --- language models --------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("masked", [False, True])
def test_jsd_matches_trl(beta: float, masked: bool) -> None:
    t, s = rand(B, L, V, seed=20), rand(B, L, V, seed=21)
    keep = token_mask() if masked else None
    lab = torch.where(keep, 1, -100) if masked else None
    same(ref.jsd(t, s, beta, keep), official_gjsd(s, t, lab, beta), [s, t])


def test_jsd_half_is_symmetric_and_bounded_by_log2() -> None:
    t, s = rand(B, L, V, seed=22, scale=6.0), rand(B, L, V, seed=23, scale=6.0)
    a, b = ref.jsd(t, s, 0.5), ref.jsd(s, t, 0.5)
    assert_close(a, b, rtol=1e-12)
    assert 0.0 < float(a) < float(torch.log(torch.tensor(2.0)))


def test_reverse_kl_matches_distillm() -> None:
    t, s, keep = rand(B, L, V, seed=24), rand(B, L, V, seed=25), token_mask()
    same(ref.reverse_kl(t, s, keep), official_reverse_kl(s, t, torch.where(keep, 1, -100)), [s, t])


def test_tvd_matches_distillm_and_is_at_most_one() -> None:
    t, s, keep = rand(B, L, V, seed=26), rand(B, L, V, seed=27), token_mask()
    value = ref.tvd(t, s, keep)
    same(value, official_tv_distance(s, t, torch.where(keep, 1, -100)), [s, t])
    assert 0.0 < float(value) <= 1.0


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_skew_kl_is_distillm_minus_the_teacher_entropy(alpha: float) -> None:
    t, s, keep = rand(B, L, V, seed=28), rand(B, L, V, seed=29), token_mask()
    lab = torch.where(keep, 1, -100)
    log_pt = torch.log_softmax(t, -1)
    entropy = ref.token_mean(-(log_pt.exp() * log_pt).sum(-1), keep)
    same(
        ref.skew_kl(t, s, alpha, keep),
        official_skewed_forward_kl(s, t, lab, alpha) - entropy,
        [s, t],
    )
    # Its gradient with respect to the student is DistiLLM's, entropy or not.
    g_ref = torch.autograd.grad(ref.skew_kl(t, s, alpha, keep), s)[0]
    g_off = torch.autograd.grad(official_skewed_forward_kl(s, t, lab, alpha), s)[0]
    assert_close(g_ref, g_off, rtol=RTOL)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_skew_reverse_kl_matches_distillm(alpha: float) -> None:
    t, s, keep = rand(B, L, V, seed=30), rand(B, L, V, seed=31), token_mask()
    official = official_skewed_reverse_kl(s, t, torch.where(keep, 1, -100), alpha)
    same(ref.skew_reverse_kl(t, s, alpha, keep), official, [s, t])


def test_skew_kl_limits() -> None:
    """alpha = 0 gives KL(p_t || p_s), the forward KL; equal inputs give 0."""
    t, s = rand(B, L, V, seed=32), rand(B, L, V, seed=33)
    assert_close(ref.skew_kl(t, s, 0.0), ref.jsd(t, s, 0.0), rtol=1e-12)
    assert_close(ref.skew_reverse_kl(t, s, 0.0), ref.reverse_kl(t, s), rtol=1e-12)
    assert float(ref.skew_kl(t, t.detach().clone(), 0.3)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "loss",
    [
        lambda t, s: ref.jsd(t, s, 0.3),
        lambda t, s: ref.reverse_kl(t, s),
        lambda t, s: ref.skew_kl(t, s, 0.2),
        lambda t, s: ref.skew_reverse_kl(t, s, 0.2),
        lambda t, s: ref.ttm(t.reshape(-1, V), s.reshape(-1, V), 3.0),
        lambda t, s: ref.mlkd(t.reshape(-1, V), s.reshape(-1, V), (2.0, 4.0)),
    ],
)
def test_reference_gradients_are_the_derivatives(loss) -> None:
    t = rand(2, 3, V, seed=34).detach()
    s = rand(2, 3, V, seed=35)
    assert torch.autograd.gradcheck(lambda x: loss(t, x), (s,))
