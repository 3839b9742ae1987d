"""Independent float64 references for the published losses of issue 9's examples.

Plain torch only: nothing here imports :mod:`kdspec`. Each function is the method's objective as
its paper defines it, with the normalisers of the authors' official code; the docstring names
the source followed and every place where paper and code differ. ``test_paper_refs.py`` checks
each reference against a line-by-line transcription of the official code (and the limits the
papers state), so a spec test that matches a reference matches the published method.

Conventions: ``teacher`` / ``student`` are logits ``[B, K]`` (classification) or ``[B, L, V]``
(language models, one distribution per token). Losses return a 0-d tensor. The cross-entropy
with the labels that most methods add is left to the caller (:func:`ce`), so each reference is
the distillation term alone, weight included where the method fixes one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ce",
    "ctkd",
    "ctkd_temperature",
    "gradient_reversal",
    "jsd",
    "kd",
    "mlkd",
    "nkd",
    "reverse_kl",
    "simkd",
    "skew_kl",
    "skew_reverse_kl",
    "token_mean",
    "ttm",
    "tvd",
    "wsl",
]


# --- building blocks ----------------------------------------------------------------------------


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Hard-label cross-entropy, mean over samples: ``-mean_b log p(y_b | x_b)``."""
    return -torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).mean()


def _kl_rows(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q) = sum p (log p - log q)`` along the last axis; one value per row."""
    return (p * (log_p - log_q)).sum(-1)


def kd(teacher: Tensor, student: Tensor, T: float | Tensor) -> Tensor:
    """Hinton et al. (2015): ``T^2 mean_b KL(softmax(t_b / T) || softmax(s_b / T))``."""
    log_pt = torch.log_softmax(teacher / T, dim=-1)
    log_ps = torch.log_softmax(student / T, dim=-1)
    return T**2 * _kl_rows(log_pt.exp(), log_pt, log_ps).mean()


def token_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``[B, L]`` per-token values over the tokens kept by ``mask`` (all when None).

    The normaliser of TRL ``generalized_jsd_loss(reduction="batchmean")`` (``sum / mask.sum()``,
    or ``sum / (B * L)`` without labels) and of DistiLLM's losses (``sum(x * mask) / sum(mask)``).
    """
    if mask is None:
        return per_token.mean()
    keep = mask.to(per_token.dtype)
    return (per_token * keep).sum() / keep.sum()


# --- classification ---------------------------------------------------------------------------


def nkd(
    teacher: Tensor, student: Tensor, labels: Tensor, T: float = 1.0, gamma: float = 1.5
) -> Tensor:
    """Normalized KD (Yang, Zeng, Li, Zhang & Yuan, ICCV 2023, "From Knowledge Distillation to
    Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
    Labels"), Eq. 8; the official ``NKDLoss`` (yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``).

    ``L = -mean_b p_t[y] log p_s[y]  -  gamma T^2 mean_b sum_{k != y} q_t(k) log q_s(k)`` where
    ``p = softmax(z)`` (no temperature) and ``q = softmax`` of the non-target logits ``/ T``
    (the non-target classes renormalised among themselves). The target probability of the
    teacher is a constant (detached). One cls_KD revision has ``scatter_(1, label, 1)``, which
    keeps the target class in the non-target distribution; the later revisions (``..., 0)``)
    and the paper drop it, as here.
    """
    log_ps = torch.log_softmax(student, dim=-1)
    pt_target = torch.softmax(teacher, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    target_term = -(pt_target.detach() * log_ps.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).mean()
    is_target = F.one_hot(labels, teacher.shape[-1]).bool()
    # Non-target distributions: the target logit set to -inf, so its probability is exactly 0.
    log_qt = torch.log_softmax((teacher / T).masked_fill(is_target, float("-inf")), dim=-1)
    log_qs = torch.log_softmax((student / T).masked_fill(is_target, float("-inf")), dim=-1)
    # 0 * log 0 = 0 at the target: fill before the product so the gradient stays finite.
    cross = (log_qt.exp() * log_qs.masked_fill(is_target, 0.0)).sum(-1)
    return target_term - gamma * T**2 * cross.mean()


def wsl(teacher: Tensor, student: Tensor, labels: Tensor, T: float = 2.0) -> Tensor:
    """Weighted Soft Labels (Zhou, Song, Chen, Zhou, Wang, Yuan & Zhang, ICLR 2021, "Rethinking
    Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective"), Eq. 6; the
    authors' ``WSLDistiller`` and cls_KD ``WSLDLoss`` (``mmcls/distillation/losses/wsld.py``).

    ``L = T^2 mean_b w_b H(softmax(t_b / T), softmax(s_b / T))`` with the per-sample weight
    ``w_b = 1 - exp(-max(CE_s,b / (CE_t,b + 1e-7), 0))``, ``CE_r,b = -log softmax(r_b)[y_b]`` at
    temperature 1 and without gradient. The soft term is the cross-entropy (as the code), not
    the KL; the two differ by the teacher entropy, so the gradients are the same. The paper's
    ``alpha`` (2.25 or 2.5) and the hard CE are the caller's.
    """
    with torch.no_grad():
        ce_s = -torch.log_softmax(student, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        ce_t = -torch.log_softmax(teacher, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        weight = 1.0 - torch.exp(-(ce_s / (ce_t + 1e-7)).clamp(min=0.0))
    soft_ce = -(torch.softmax(teacher / T, -1) * torch.log_softmax(student / T, -1)).sum(-1)
    return T**2 * (weight * soft_ce).mean()


def mlkd(
    teacher: Tensor,
    student: Tensor,
    temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
    sample_weight: Tensor | None = None,
    class_weight: Tensor | None = None,
) -> Tensor:
    """Multi-level logit distillation (Jin, Wang & Lin, CVPR 2023), Eqs. 3-6, on one view; the
    losses ``kd_loss`` / ``bc_loss`` / ``cc_loss`` of the official ``KD_ours``
    (Jin-Ying/Multi-Level-Logit-Distillation, ``mdistiller/distillers/KD_ours.py``).

    Summed over the temperatures (prediction augmentation), with ``P = softmax(z / T)`` ``[B, K]``:

    - instance level ``T^2 sum_b w_b KL(P_t,b || P_s,b) / B``;
    - batch level ``sum_{ij} w_i (G_t - G_s)_ij^2 / B`` with ``G = P Pᵀ`` ``[B, B]``;
    - class level ``sum_{kl} c_k (M_t - M_s)_kl^2 / K`` with ``M = Pᵀ P`` ``[K, K]``.

    ``sample_weight`` (``w``, per sample) and ``class_weight`` (``c``, per class) are the
    confidence masks, 1 when None. The official code multiplies a loss that is already reduced
    by a boolean mask and takes ``.mean()``, so there each mask acts as the constant
    ``mean(mask)``: pass ``w = mean(mask)`` to reproduce it, or the mask itself for the paper's
    per-sample reading. The code also runs a weak and a strong view; call this once per view.
    """
    B, K = teacher.shape
    w = torch.ones(B, dtype=teacher.dtype) if sample_weight is None else sample_weight
    c = torch.ones(K, dtype=teacher.dtype) if class_weight is None else class_weight
    total = teacher.new_zeros(())
    for T in temperatures:
        log_pt, log_ps = torch.log_softmax(teacher / T, -1), torch.log_softmax(student / T, -1)
        pt, ps = log_pt.exp(), log_ps.exp()
        instance = T**2 * (w * _kl_rows(pt, log_pt, log_ps)).sum() / B
        batch = (w.unsqueeze(1) * (pt @ pt.T - ps @ ps.T).pow(2)).sum() / B
        klass = (c.unsqueeze(1) * (pt.T @ pt - ps.T @ ps).pow(2)).sum() / K
        total = total + instance + batch + klass
    return total


class _GradientReversal(torch.autograd.Function):
    """Identity forward; ``-lambda`` times the gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


def gradient_reversal(x: Tensor, lam: float) -> Tensor:
    """The gradient reversal layer CTKD puts in front of its temperature."""
    return _GradientReversal.apply(x, lam)


def ctkd_temperature(
    theta: Tensor, lam: float, t_start: float = 1.0, t_end: float = 20.0
) -> Tensor:
    """CTKD's global temperature: ``t_start + t_end * sigmoid(GRL_lambda(theta))``."""
    return t_start + t_end * torch.sigmoid(gradient_reversal(theta, lam))


def ctkd(
    teacher: Tensor,
    student: Tensor,
    theta: Tensor,
    lam: float,
    t_start: float = 1.0,
    t_end: float = 20.0,
) -> Tensor:
    """Curriculum Temperature KD (Li, Li, Yang, Cheng, Liu, Zhou & Yang, AAAI 2023), the global
    temperature of the official code (zhengli97/CTKD: ``helper/loops.py`` ``train_distill``,
    ``distiller_zoo/KD.py`` ``DistillKL``, ``models/temp_global.py`` ``Global_T``).

    ``T = t_start + t_end * sigmoid(theta)`` (``theta`` a learned scalar, initialised to 1),
    ``L = T^2 KL_batchmean(softmax(t / T) || softmax(s / T))``. The student descends ``L``; the
    temperature ascends it: ``theta`` sits behind a gradient reversal layer whose ``lambda``
    follows a cosine curriculum from 0 up to 1 over the first epochs. The loss is plain KD at
    that temperature; only the gradient with respect to ``theta`` is reversed and scaled.
    """
    return kd(teacher, student, ctkd_temperature(theta, lam, t_start, t_end))


def ttm(teacher: Tensor, student: Tensor, T: float = 4.0) -> Tensor:
    """Transformed Teacher Matching (Zheng & Yang, ICLR 2024, "Knowledge Distillation Based on
    Transformed Teacher Matching"), Eq. 9 ``beta KL(p_t^{1/T} normalised || p_s)`` without
    ``beta``; the official ``TTM`` loss (``torch.pow(softmax(y_t), l)`` normalised, ``l = 1/T``,
    ``sum_k kl_div`` averaged over the batch).

    The temperature acts on the teacher only (the power transform ``p^{1/T} / sum p^{1/T}`` is
    ``softmax(t / T)``); the student is matched at temperature 1, and there is no ``T^2``.
    """
    log_pt = torch.log_softmax(teacher, -1) / T
    log_pt = log_pt - torch.logsumexp(log_pt, dim=-1, keepdim=True)  # the power, renormalised
    return _kl_rows(log_pt.exp(), log_pt, torch.log_softmax(student, -1)).mean()


def simkd(
    teacher_feature: Tensor,
    student_feature: Tensor,
    projector: nn.Module,
    teacher_classifier: nn.Module,
) -> tuple[Tensor, Tensor]:
    """SimKD (Chen, Mei, Zhang, Wang, Feng & Chen, CVPR 2022, "Knowledge Distillation with the
    Reused Teacher Classifier"), Eq. 2; the official ``SimKD`` module and loop (DefangChen/SimKD:
    ``criterion_kd = nn.MSELoss()`` on the projected student feature, loss weights cls 0, div 0,
    kd 1).

    Returns ``(loss, logits)``: ``loss = mean((proj(f_s) - f_t)^2)`` (the only training signal;
    the larger spatial map is average-pooled to the smaller one first) and the student's
    prediction ``logits = W_t avgpool(proj(f_s))``, the teacher's own classifier applied to
    the projected student feature (what the student predicts with at test time).
    """
    hs, ht = student_feature.shape[-1], teacher_feature.shape[-1]
    if hs > ht:
        student_feature = F.adaptive_avg_pool2d(student_feature, (ht, ht))
    elif ht > hs:
        teacher_feature = F.adaptive_avg_pool2d(teacher_feature, (hs, hs))
    projected = projector(student_feature)
    loss = (projected - teacher_feature).pow(2).mean()
    logits = teacher_classifier(projected.mean(dim=(2, 3)))
    return loss, logits


# --- language models: one distribution per token [B, L, V] --------------------------------------


def reverse_kl(
    teacher: Tensor, student: Tensor, mask: Tensor | None = None, T: float = 1.0
) -> Tensor:
    """Per-token reverse KL ``KL(p_s || p_t)`` (MiniLLM, Gu et al. ICLR 2024), mean over the kept
    tokens; DistiLLM's ``reverse_kl`` (jongwooko/distillm, ``distillm/losses.py``), which is
    ``sum_v p_s (log p_s - log p_t)`` with the padding mask ``labels != -100``."""
    log_ps = torch.log_softmax(student / T, -1)
    log_pt = torch.log_softmax(teacher / T, -1)
    return token_mean(_kl_rows(log_ps.exp(), log_ps, log_pt), mask)


def jsd(
    teacher: Tensor,
    student: Tensor,
    beta: float = 0.5,
    mask: Tensor | None = None,
    T: float = 1.0,
) -> Tensor:
    """Generalised Jensen-Shannon divergence with mixing coefficient ``beta`` (Agarwal et al.,
    ICLR 2024, "On-Policy Distillation of Language Models", Eq. 1), as TRL's
    ``GKDTrainer.generalized_jsd_loss`` (``reduction="batchmean"``: sum over the kept tokens'
    values divided by their number).

    ``m = beta p_t + (1 - beta) p_s``; ``JSD = beta KL(p_t || m) + (1 - beta) KL(p_s || m)`` per
    token. TRL defines the end points as ``beta = 0``: ``KL(p_t || p_s)`` (forward KL) and
    ``beta = 1``: ``KL(p_s || p_t)`` (reverse KL), not the limits of the formula (0); they are
    reproduced here. (TRL releases before the ``logsumexp`` mixture used
    ``beta log p_t + (1 - beta) log p_s`` as the mixture's log, a different quantity.)
    """
    log_pt = torch.log_softmax(teacher / T, -1)
    log_ps = torch.log_softmax(student / T, -1)
    pt, ps = log_pt.exp(), log_ps.exp()
    if beta == 0:
        per_token = _kl_rows(pt, log_pt, log_ps)
    elif beta == 1:
        per_token = _kl_rows(ps, log_ps, log_pt)
    else:
        log_m = torch.log(beta * pt + (1.0 - beta) * ps)
        per_token = beta * _kl_rows(pt, log_pt, log_m) + (1.0 - beta) * _kl_rows(ps, log_ps, log_m)
    return token_mean(per_token, mask)


def tvd(teacher: Tensor, student: Tensor, mask: Tensor | None = None, T: float = 1.0) -> Tensor:
    """Per-token total variation distance ``0.5 sum_v |p_t - p_s|`` (Wen et al. ACL 2023,
    "f-Divergence Minimization for Sequence-Level Knowledge Distillation"), mean over the kept
    tokens; DistiLLM's ``tv_distance``."""
    pt, ps = torch.softmax(teacher / T, -1), torch.softmax(student / T, -1)
    return token_mean(0.5 * (pt - ps).abs().sum(-1), mask)


def skew_kl(
    teacher: Tensor, student: Tensor, alpha: float = 0.1, mask: Tensor | None = None, T: float = 1.0
) -> Tensor:
    """Skew KL (Ko, Kim, Chen & Yun, ICML 2024, "DistiLLM"), Eq. 3:
    ``SKL_alpha(p_t, p_s) = KL(p_t || alpha p_t + (1 - alpha) p_s)`` per token, mean over the kept
    tokens.

    DistiLLM's ``skewed_forward_kl`` returns ``-sum_v p_t log m``, the cross-entropy: it exceeds
    this KL by the teacher entropy ``H(p_t)``, a constant, so the gradients agree; the value
    here is the paper's (0 when ``p_s = p_t``).
    """
    log_pt = torch.log_softmax(teacher / T, -1)
    pt, ps = log_pt.exp(), torch.softmax(student / T, -1)
    log_m = torch.log(alpha * pt + (1.0 - alpha) * ps)
    return token_mean(_kl_rows(pt, log_pt, log_m), mask)


def skew_reverse_kl(
    teacher: Tensor, student: Tensor, alpha: float = 0.1, mask: Tensor | None = None, T: float = 1.0
) -> Tensor:
    """Skew reverse KL (DistiLLM, Eq. 4): ``KL(p_s || alpha p_s + (1 - alpha) p_t)`` per token,
    mean over the kept tokens; DistiLLM's ``skewed_reverse_kl`` (the same value)."""
    log_ps = torch.log_softmax(student / T, -1)
    ps, pt = log_ps.exp(), torch.softmax(teacher / T, -1)
    log_m = torch.log(alpha * ps + (1.0 - alpha) * pt)
    return token_mean(_kl_rows(ps, log_ps, log_m), mask)
