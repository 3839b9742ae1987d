"""Matching losses: ``loss(teacher_or_target, student, **params) -> scalar``.

The teacher (or target) always comes first and the student second ("from t to s"); the one
exception is :func:`cross_entropy` ``(logits, labels)``. Losses over distributions (``kl``,
``soft_ce``) take log-probabilities on both sides, as produced by :mod:`kdspec.ops.transforms`.
Temperature-squared factors and loss weights are *not* applied here: the spec compiler applies
them.

Reductions (where offered):

- ``"batchmean"``: sum over everything, divided by the batch size ``B`` (dim 0).
- ``"mean"``: mean over all elements.
- ``"sum"``: sum over everything.

The compiler looks the losses up by name in :data:`LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "ab_hinge",
    "cosine",
    "cross_entropy",
    "frobenius",
    "gaussian_nll",
    "hcl",
    "info_nce",
    "kl",
    "l1",
    "lp",
    "mmd",
    "mse",
    "pearson",
    "smooth_l1",
    "soft_ce",
]

_REDUCTIONS = ("batchmean", "mean", "sum")


def _reduce(elem: Tensor, reduction: str, batch: int) -> Tensor:
    if reduction == "batchmean":
        return elem.sum() / batch
    if reduction == "mean":
        return elem.mean()
    if reduction == "sum":
        return elem.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_same_shape(name: str, t: Tensor, s: Tensor) -> None:
    if t.shape != s.shape:
        raise ValueError(
            f"{name}: teacher shape {tuple(t.shape)} != student shape {tuple(s.shape)}"
        )


# --------------------------------------------------------------------------------------------
# Distribution losses
# --------------------------------------------------------------------------------------------


def kl(t: Tensor, s: Tensor, reduction: str = "batchmean", eps: float = 0.0) -> Tensor:
    """KL(p_t || p_s) from log-probabilities.

    ``eps == 0``: ``sum exp(t) * (t - s)`` (terms with ``p_t == 0`` count as 0, as
    ``F.kl_div``'s convention). ``eps > 0``: ``sum p_t * log((p_t + eps) / (p_s + eps))`` with
    ``p = exp(log p)``, the PKT formula.

    Hinton KD as in RepDistiller ``DistillKL``, mdistiller ``kd_loss``, torchdistill ``KDLoss``
    and DKD is ``reduction="batchmean"`` (times T², applied by the compiler). PKT is
    ``eps=1e-7, reduction="mean"``. Tf-KD_reg uses ``nn.KLDivLoss()``'s default, i.e.
    ``reduction="mean"`` over all ``B*K`` elements.

    Args:
        t: Teacher/target log-probabilities ``[B, ...]``.
        s: Student log-probabilities, same shape.
        reduction: ``"batchmean"``, ``"mean"`` or ``"sum"``.
        eps: Smoothing constant inside the log ratio (0 for the exact KL).

    Returns:
        Scalar.
    """
    _check_same_shape("kl", t, s)
    p_t = t.exp()
    if eps == 0.0:
        # where() before the product keeps the gradient finite where p_t == 0 (t == -inf).
        diff = torch.where(p_t > 0, t - s, torch.zeros_like(t))
        elem = p_t * diff
    else:
        p_s = s.exp()
        elem = p_t * torch.log((p_t + eps) / (p_s + eps))
    return _reduce(elem, reduction, t.shape[0])


def soft_ce(t: Tensor, s: Tensor, reduction: str = "batchmean") -> Tensor:
    """Soft-target cross-entropy ``-sum p_t * log p_s`` from log-probabilities.

    Differs from :func:`kl` by the teacher entropy, a constant for a frozen teacher.

    Args:
        t: Teacher/target log-probabilities ``[B, ...]``.
        s: Student log-probabilities, same shape.
        reduction: ``"batchmean"``, ``"mean"`` or ``"sum"``.

    Returns:
        Scalar.
    """
    _check_same_shape("soft_ce", t, s)
    p_t = t.exp()
    elem = -p_t * torch.where(p_t > 0, s, torch.zeros_like(s))
    return _reduce(elem, reduction, t.shape[0])


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Hard-label cross-entropy (``F.cross_entropy``, mean over samples).

    Args:
        logits: ``[B, C]``; ``[B, L, C]`` token logits are flattened to ``[B*L, C]``.
        labels: int64 ``[B]`` (``[B, L]`` for tokens); ``-100`` is ignored.
        label_smoothing: As ``F.cross_entropy``.

    Returns:
        Scalar.
    """
    if logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------------
# Elementwise regression losses
# --------------------------------------------------------------------------------------------


def mse(t: Tensor, s: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error ``(s - t)^2``.

    FitNets/AT/FSP in RepDistiller and mdistiller use ``"mean"``; torchdistill's FitNet sample
    config uses ``MSELoss(reduction="sum")``.

    Args:
        t: Target ``[B, ...]``.
        s: Student, same shape.
        reduction: ``"mean"``, ``"sum"`` or ``"batchmean"``.

    Returns:
        Scalar.
    """
    _check_same_shape("mse", t, s)
    return _reduce((s - t).pow(2), reduction, t.shape[0])


def l1(t: Tensor, s: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute error ``|s - t|``.

    Args:
        t: Target ``[B, ...]``.
        s: Student, same shape.
        reduction: ``"mean"``, ``"sum"`` or ``"batchmean"``.

    Returns:
        Scalar.
    """
    _check_same_shape("l1", t, s)
    return _reduce((s - t).abs(), reduction, t.shape[0])


def smooth_l1(t: Tensor, s: Tensor, beta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Smooth L1 (Huber with ``beta``), as ``F.smooth_l1_loss``; RKD uses ``beta=1, "mean"``.

    Args:
        t: Target ``[B, ...]``.
        s: Student, same shape.
        beta: Transition point between the quadratic and linear parts.
        reduction: ``"mean"``, ``"sum"`` or ``"batchmean"``.

    Returns:
        Scalar.
    """
    _check_same_shape("smooth_l1", t, s)
    elem = F.smooth_l1_loss(s, t, reduction="none", beta=beta)
    return _reduce(elem, reduction, t.shape[0])


def cosine(t: Tensor, s: Tensor, dim: int | None = None, eps: float = 1e-8) -> Tensor:
    """Cosine-embedding loss with target 1: ``mean(1 - cos(t, s))``.

    Args:
        t: Target ``[B, ...]``.
        s: Student, same shape.
        dim: None: cosine between whole flattened samples, averaged over the batch. An int:
            cosine along that dim, averaged over all other positions (DistilBERT's per-token
            loss on ``[B, L, D]`` hidden states is ``dim=-1``; it also drops padding tokens).
        eps: As ``F.cosine_similarity``.

    Returns:
        Scalar.
    """
    _check_same_shape("cosine", t, s)
    if dim is None:
        t, s, dim = t.reshape(t.shape[0], -1), s.reshape(s.shape[0], -1), 1
    return (1.0 - F.cosine_similarity(s, t, dim=dim, eps=eps)).mean()


def lp(
    t: Tensor,
    s: Tensor,
    p: float = 2.0,
    dim: int | Sequence[int] | None = None,
    squared: bool = True,
    reduction: str = "batchmean",
) -> Tensor:
    """Lp distance of ``d = s - t``, optionally raised to the p-th power.

    ``dim=None``: one norm per sample over all non-batch dims; else the norm over ``dim`` keeping
    the other dims. With ``squared`` each norm is raised to ``p`` (squared for ``p=2``).

    AT "paper" mode (torchdistill) = ``lp(p=2, squared=False)`` on attention maps; torchdistill
    ``FSPLoss`` = ``lp(p=2, dim=1, squared=False)`` on ``[B, C1, C2]`` FSP matrices.

    Args:
        t: Target ``[B, ...]``.
        s: Student, same shape.
        p: Norm order.
        dim: Norm dims, or None for all non-batch dims.
        squared: Raise each norm to the p-th power.
        reduction: ``"batchmean"`` (sum / B), ``"mean"`` (mean of the norms) or ``"sum"``.

    Returns:
        Scalar.
    """
    _check_same_shape("lp", t, s)
    d = s - t
    dims: int | tuple[int, ...]
    if dim is None:
        d = d.reshape(d.shape[0], -1)
        dims = 1
    else:
        dims = dim if isinstance(dim, int) else tuple(dim)
    if squared:
        # sum |d|^p directly: same value as norm^p, and smooth at d == 0.
        norms = d.abs().pow(p).sum(dim=dims)
    else:
        norms = torch.linalg.vector_norm(d, ord=p, dim=dims)
    return _reduce(norms, reduction, t.shape[0])


def frobenius(t: Tensor, s: Tensor, relation: bool = False) -> Tensor:
    """Squared Frobenius distance, normalised by what the tensors are, never by their shape.

    ``relation=True`` (``[B, B]`` relation matrices between the samples of a batch, SP):
    ``||t - s||_F^2 / B^2`` (RepDistiller, mdistiller, torchdistill ``"batchmean"``).
    Otherwise ``lp(t, s, p=2, squared=True)``: ``||t - s||_F^2 / B``. The compiler passes
    ``relation=True`` exactly when the knowledge is a batch relation (its kind), so an embedding
    whose width happens to equal the batch size is still divided by ``B``.

    Args:
        t: Target ``[B, B]`` (relation) or ``[B, ...]``.
        s: Student, same shape.
        relation: The tensors are ``[B, B]`` relations between samples.

    Returns:
        Scalar.
    """
    _check_same_shape("frobenius", t, s)
    if relation:
        if t.dim() != 2 or t.shape[0] != t.shape[1]:
            raise ValueError(f"frobenius: a relation is [B, B], got {tuple(t.shape)}")
        return (s - t).pow(2).sum() / (t.shape[0] ** 2)
    return lp(t, s, p=2.0, squared=True, reduction="batchmean")


# --------------------------------------------------------------------------------------------
# Distribution-matching and correlation losses
# --------------------------------------------------------------------------------------------


def _kernel(a: Tensor, b: Tensor, kernel: str, gamma: float) -> Tensor:
    # a [B, Ca, N], b [B, Cb, N] -> [B, Ca, Cb]
    dot = torch.bmm(a, b.transpose(1, 2))
    if kernel == "poly":
        return dot.pow(2)
    if kernel == "linear":
        return dot
    if kernel == "rbf":
        sq_a = a.pow(2).sum(-1).unsqueeze(2)  # [B, Ca, 1]
        sq_b = b.pow(2).sum(-1).unsqueeze(1)  # [B, 1, Cb]
        d2 = (sq_a + sq_b - 2.0 * dot).clamp(min=0.0)
        return torch.exp(-gamma * d2)
    raise ValueError(f"mmd kernel must be 'poly', 'linear' or 'rbf', got {kernel!r}")


def mmd(t: Tensor, s: Tensor, kernel: str = "poly", gamma: float = 1.0) -> Tensor:
    """Squared MMD between the sets of channel vectors (NST, Huang & Wang 2017).

    ``mean K(t, t) + mean K(s, s) - 2 mean K(s, t)`` per sample, averaged over the batch, as
    RepDistiller / mdistiller ``NSTLoss`` (poly kernel ``(xᵀy)^2``). The channel counts may
    differ; the vector length N must match.

    Args:
        t: Teacher ``[B, Ct, N]`` (e.g. :func:`~kdspec.ops.transforms.channel_dist`); 4-D maps
            are flattened to ``[B, C, H*W]`` as they are.
        s: Student ``[B, Cs, N]``.
        kernel: ``"poly"`` (``(xᵀy)^2``), ``"linear"`` (``xᵀy``) or ``"rbf"``
            (``exp(-gamma |x - y|^2)``).
        gamma: RBF bandwidth.

    Returns:
        Scalar.
    """
    t, s = t.flatten(2), s.flatten(2)
    if t.shape[0] != s.shape[0] or t.shape[2] != s.shape[2]:
        raise ValueError(
            f"mmd: teacher {tuple(t.shape)} and student {tuple(s.shape)} need equal B and N"
        )
    return (
        _kernel(t, t, kernel, gamma).mean()
        + _kernel(s, s, kernel, gamma).mean()
        - 2.0 * _kernel(s, t, kernel, gamma).mean()
    )


def pearson(t: Tensor, s: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``1 - mean Pearson correlation`` along ``dim`` (DIST, Huang et al. NeurIPS'22).

    As torchdistill ``DISTLoss``: ``F.cosine_similarity`` of the vectors centred along ``dim``,
    with ``eps``. (The authors' and mdistiller's ``cosine_similarity`` divides by
    ``|a||b| + eps`` instead; the two differ only for near-constant vectors.)

    Args:
        t: Teacher probabilities ``[B, K]``.
        s: Student probabilities, same shape.
        dim: 1 = inter-class relation (per sample), 0 = intra-class (per class over the batch).
        eps: Norm floor.

    Returns:
        Scalar.
    """
    _check_same_shape("pearson", t, s)
    tc = t - t.mean(dim=dim, keepdim=True)
    sc = s - s.mean(dim=dim, keepdim=True)
    return 1.0 - F.cosine_similarity(sc, tc, dim=dim, eps=eps).mean()


# --------------------------------------------------------------------------------------------
# Feature losses with method-specific masking or structure
# --------------------------------------------------------------------------------------------


def ab_hinge(t: Tensor, s: Tensor, margin: float = 1.0, reduction: str = "batchmean") -> Tensor:
    """AB "alternative L2" (torchdistill ``AltActTransferLoss``, RepDistiller ``ABLoss``).

    ``sum (s + m)^2 1[s > -m & t <= 0] + (s - m)^2 1[s <= m & t > 0]``. ``t`` may be the raw
    pre-ReLU teacher map or its ``binarize`` (``1[t > 0]``, same result).
    torchdistill ``reduction="mean"`` is ``"batchmean"`` here. RepDistiller additionally
    multiplies stage i of n by ``2^(i-n+1)`` and the total by ``3/1000``.

    Args:
        t: Teacher pre-activations (or their 0/1 indicator) ``[B, C, H, W]``.
        s: Student connector output, same shape.
        margin: m.
        reduction: ``"batchmean"``, ``"mean"`` or ``"sum"``.

    Returns:
        Scalar.
    """
    _check_same_shape("ab_hinge", t, s)
    neg = ((s > -margin) & (t <= 0)).to(s.dtype)
    pos = ((s <= margin) & (t > 0)).to(s.dtype)
    elem = (s + margin).pow(2) * neg + (s - margin).pow(2) * pos
    return _reduce(elem, reduction, t.shape[0])


def gaussian_nll(
    t: Tensor,
    s_mean: Tensor | tuple[Tensor, Tensor],
    s_var: Tensor | None = None,
) -> Tensor:
    """VID Gaussian negative log-likelihood (torchdistill / RepDistiller ``VIDLoss``).

    ``mean(0.5 * ((mu - t)^2 / var + log var))`` over the broadcast ``[B, C, H, W]`` elements
    (the constant ``0.5 log 2π`` is dropped, as in the references).

    Args:
        t: Teacher ``[B, C, H, W]``.
        s_mean: Predicted mean ``[B, C, H, W]``, or a ``(mean, var)`` tuple (the output of the
            ``vid_regressor`` adapter).
        s_var: Predicted variance broadcastable to ``t`` (e.g. ``[1, C, 1, 1]``); omit when
            ``s_mean`` is a tuple.

    Returns:
        Scalar.
    """
    if isinstance(s_mean, (tuple, list)):
        if s_var is not None or len(s_mean) != 2:
            raise ValueError("gaussian_nll takes either (mean, var) as one tuple or both tensors")
        mu, var = s_mean
    elif s_var is None:
        raise ValueError("gaussian_nll needs s_var, or s_mean as a (mean, var) tuple")
    else:
        mu, var = s_mean, s_var
    _check_same_shape("gaussian_nll", t, mu)
    nll = 0.5 * ((mu - t).pow(2) / var + torch.log(var))
    return nll.mean()


def hcl(t: Tensor, s: Tensor, levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD hierarchical context loss (``hcl`` in ReviewKD / mdistiller / torchdistill).

    ``MSE + sum_k w_k MSE(pool_k)`` divided by the total weight, where ``w`` starts at 1 and halves
    for every level that is used; levels ``>= H`` are skipped.

    Args:
        t: Teacher ``[B, C, H, W]``.
        s: Student (fused) features, same shape.
        levels: Pyramid output sizes.

    Returns:
        Scalar.
    """
    _check_same_shape("hcl", t, s)
    h = s.shape[2]
    loss = F.mse_loss(s, t, reduction="mean")
    w = 1.0
    total = 1.0
    for level in levels:
        if level >= h:
            continue
        w /= 2.0
        ps = F.adaptive_avg_pool2d(s, (level, level))
        pt = F.adaptive_avg_pool2d(t, (level, level))
        loss = loss + w * F.mse_loss(ps, pt, reduction="mean")
        total += w
    return loss / total


def info_nce(t: Tensor, s: Tensor, T: float = 0.07) -> Tensor:
    """In-batch InfoNCE: sample i of the student must pick sample i of the teacher.

    A memory-bank-free stand-in for CRD's NCE: L2-normalised embeddings, logits ``s tᵀ / T``,
    cross-entropy with the diagonal as positives.

    Args:
        t: Teacher embeddings ``[B, D]`` (other shapes are flattened).
        s: Student embeddings ``[B, D]``.
        T: Temperature.

    Returns:
        Scalar.
    """
    zt = F.normalize(t.reshape(t.shape[0], -1), dim=1)  # [B, D]
    zs = F.normalize(s.reshape(s.shape[0], -1), dim=1)  # [B, D]
    if zt.shape != zs.shape:
        raise ValueError(f"info_nce: teacher {tuple(zt.shape)} != student {tuple(zs.shape)}")
    logits = zs @ zt.t() / T  # [B, B]
    target = torch.arange(zs.shape[0], device=zs.device)
    return F.cross_entropy(logits, target)


LOSSES: dict[str, Callable[..., Any]] = {
    "kl": kl,
    "soft_ce": soft_ce,
    "cross_entropy": cross_entropy,
    "mse": mse,
    "l1": l1,
    "smooth_l1": smooth_l1,
    "cosine": cosine,
    "lp": lp,
    "frobenius": frobenius,
    "mmd": mmd,
    "pearson": pearson,
    "ab_hinge": ab_hinge,
    "gaussian_nll": gaussian_nll,
    "hcl": hcl,
    "info_nce": info_nce,
}
"""Every loss by its spec name."""
