"""Torch-level transforms applied to tapped tensors before a matching loss.

Every transform is a pure, batch-first function ``f(x, **params) -> Tensor`` (``fsp``, ``mean``
and ``mean_dist`` take several tensors). The spec compiler looks them up by name in
:data:`TRANSFORMS`. The transforms written in kdspec itself (``attention``, ``similarity``,
``gram``, ``binary_target``, ``distances``, ...) live in ``kdspec/prelude/*.kd`` instead.

Distributions (the outputs of ``softmax`` and ``mean_dist``) are always
carried as **log-probabilities**; the prelude's losses read a distribution's probabilities, or
its exact log-probabilities through ``log`` (``kl``, ``soft_ce``).

Formulas follow the reference implementations named in each docstring (RepDistiller, mdistiller,
torchdistill, the authors' code) so that a spec reproduces their numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TRANSFORMS",
    "interpolate",
    "log_softmax",
    "margin_relu",
    "mean",
    "mean_dist",
    "normalize",
    "ofd_margin",
    "pool",
    "softmax",
    "stopgrad",
    "virtual_teacher",
]

# mdistiller's DKD pushes the target logit out of the softmax with this offset.
_DKD_MASK_OFFSET = 1000.0


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _unpack(xs: tuple[Any, ...]) -> tuple[Tensor, ...]:
    # Accept both f(a, b, c) and f([a, b, c]).
    if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
        xs = tuple(xs[0])
    if not xs:
        raise ValueError("expected at least one tensor")
    return xs


# --------------------------------------------------------------------------------------------
# Response (logit) transforms
# --------------------------------------------------------------------------------------------


def softmax(x: Tensor, T: float = 1.0) -> Tensor:
    """Temperature softmax, returned as log-probabilities (a distribution).

    Args:
        x: Logits ``[..., K]``.
        T: Temperature.

    Returns:
        ``log_softmax(x / T)`` along the last dim, ``[..., K]``.
    """
    return F.log_softmax(x / T, dim=-1)


def log_softmax(x: Tensor, T: float = 1.0) -> Tensor:
    """Temperature log-softmax as a plain tensor (same numbers as :func:`softmax`).

    Args:
        x: Logits ``[..., K]``.
        T: Temperature.

    Returns:
        ``log_softmax(x / T)`` along the last dim, ``[..., K]``.
    """
    return softmax(x, T)


def mean_dist(*log_ps: Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Log of the (weighted) mean of several distributions (multi-teacher soft targets).

    ``log sum_i w_i p_i = logsumexp_i(log w_i + log p_i)``, with the weights normalised to sum 1.

    Args:
        *log_ps: N log-probability tensors of equal shape ``[B, K]`` (or one list of them).
        weights: N non-negative weights; uniform when None.

    Returns:
        ``[B, K]`` log-probabilities.
    """
    xs = _unpack(log_ps)
    stacked = torch.stack(xs, dim=0)  # [N, B, K]
    n = stacked.shape[0]
    if weights is None:
        log_w = torch.full((n,), -math.log(n), dtype=stacked.dtype, device=stacked.device)
    else:
        w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
        if w.shape != (n,):
            raise ValueError(f"expected {n} weights, got shape {tuple(w.shape)}")
        log_w = torch.log(w / w.sum())
    log_w = log_w.view(n, *([1] * (stacked.dim() - 1)))
    return torch.logsumexp(stacked + log_w, dim=0)


def mean(*xs: Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Plain (weighted) mean of tensors of equal shape.

    Args:
        *xs: N tensors of equal shape ``[B, ...]`` (or one list of them).
        weights: N weights, normalised to sum 1; uniform when None.

    Returns:
        ``sum_i w_i x_i / sum_i w_i``, ``[B, ...]``.
    """
    ts = _unpack(xs)
    stacked = torch.stack(ts, dim=0)  # [N, B, ...]
    if weights is None:
        return stacked.mean(dim=0)
    w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    if w.shape != (stacked.shape[0],):
        raise ValueError(f"expected {stacked.shape[0]} weights, got shape {tuple(w.shape)}")
    w = (w / w.sum()).view(-1, *([1] * (stacked.dim() - 1)))
    return (stacked * w).sum(dim=0)


def weighted(*xs: Tensor, weights: Sequence[float] | Tensor) -> Tensor:
    """Weighted mean of tensors of equal shape (weights normalised to sum 1)."""
    return mean(*xs, weights=weights)


def virtual_teacher(
    labels: Tensor,
    num_classes: int,
    correct: float = 0.99,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Tf-KD_reg hand-designed teacher: ``correct`` on the label, uniform on the rest.

    As in Yuan et al.'s ``loss_kd_regularization`` these values are then used *as logits*
    (``softmax(teacher_soft / T)``), so follow this with :func:`softmax`.

    Args:
        labels: Ground-truth classes, int64 ``[B]``.
        num_classes: K, at least 2.
        correct: Value on the correct class.
        dtype: Output dtype.

    Returns:
        ``[B, K]`` with ``correct`` at the label and ``(1 - correct) / (K - 1)`` elsewhere.
    """
    if num_classes < 2:
        raise ValueError(f"virtual_teacher needs num_classes >= 2, got {num_classes}")
    out = torch.full(
        (labels.shape[0], num_classes),
        (1.0 - correct) / (num_classes - 1),
        dtype=dtype,
        device=labels.device,
    )
    return out.scatter(1, labels.unsqueeze(1), correct)


# --------------------------------------------------------------------------------------------
# Feature transforms
# --------------------------------------------------------------------------------------------


def normalize(x: Tensor, p: float = 2.0) -> Tensor:
    """Lp-normalise each sample (4-D input is flattened first), ``F.normalize`` with eps 1e-12.

    Args:
        x: ``[B, C, H, W]`` or ``[..., D]``.
        p: Norm order.

    Returns:
        ``[B, C*H*W]`` for 4-D input, else the input shape normalised along the last dim.
    """
    if x.dim() == 4:
        x = x.reshape(x.shape[0], -1)
    return F.normalize(x, p=p, dim=-1, eps=1e-12)


def pool(x: Tensor, size: int | Sequence[int] = 1, mask: Tensor | None = None) -> Tensor:
    """Adaptive average pooling.

    Args:
        x: ``[B, C, H, W]``; also ``[B, L, D]`` (pools over the tokens L) and ``[B, D]``
            (already pooled: returned unchanged when ``size == 1``).
        size: Output spatial size (int or ``(h, w)``; an int for token inputs).
        mask: ``[B, L]`` for token inputs: the mean over the tokens it keeps (1) only.

    Returns:
        ``[B, C]`` when ``size`` is 1 (``[B, D]`` for tokens), else ``[B, C, h, w]``
        (``[B, size, D]`` for tokens).
    """
    if x.dim() == 4:
        hw = _pair(size)
        y = F.adaptive_avg_pool2d(x, hw)  # [B, C, h, w]
        return y.flatten(1) if hw == (1, 1) else y
    if x.dim() == 3:
        if not isinstance(size, int):
            raise ValueError("token pooling takes an int size")
        if mask is not None:
            if size != 1:
                raise ValueError("pooling tokens to more than one position ignores the mask")
            keep = mask.to(x.dtype).unsqueeze(-1)  # [B, L, 1]
            return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        if size == 1:
            return x.mean(dim=1)  # [B, D]
        return F.adaptive_avg_pool1d(x.transpose(1, 2), size).transpose(1, 2)  # [B, size, D]
    if x.dim() == 2 and _pair(size) == (1, 1):
        return x
    raise ValueError(f"pool cannot pool {tuple(x.shape)} to size {size}")


def interpolate(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``).

    Args:
        x: ``[B, C, H, W]``.
        size: Output spatial size, int or ``(h, w)``.

    Returns:
        ``[B, C, h, w]``.
    """
    return F.interpolate(x, size=_pair(size), mode="bilinear", align_corners=False)


def margin_relu(x: Tensor, margin: Tensor | float) -> Tensor:
    """OFD teacher transform ``max(x, m)`` with a per-channel margin.

    Args:
        x: Pre-ReLU features ``[B, C, ...]``.
        margin: ``[C]`` margins (see :func:`ofd_margin`) or a scalar.

    Returns:
        ``[B, C, ...]``.
    """
    m = torch.as_tensor(margin, dtype=x.dtype, device=x.device)
    if m.dim() == 1:
        if m.shape[0] != x.shape[1]:
            raise ValueError(f"margin has {m.shape[0]} channels, features have {x.shape[1]}")
        m = m.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.max(x, m)


def ofd_margin(bn: nn.BatchNorm2d) -> Tensor:
    """OFD margin per channel from the affine parameters of the BN before the ReLU.

    Reproduces OFD / mdistiller ``get_margin_from_BN``: with ``s = |gamma|`` and ``m = beta``,
    the margin is ``E[x | x < 0]`` for ``x ~ N(m, s^2)``, i.e. ``m - s * pdf(m/s) / cdf(-m/s)``,
    or ``-3 s`` where ``cdf(-m/s) <= 0.001``. The normal cdf is written with ``torch.erf``.

    Args:
        bn: An affine BatchNorm (its weight and bias are used, not the running statistics).

    Returns:
        ``[C]`` margins (detached) in ``bn.weight``'s dtype.
    """
    if bn.weight is None or bn.bias is None:
        raise ValueError("ofd_margin needs an affine BatchNorm (weight and bias)")
    s = bn.weight.detach().abs().double()  # [C]
    m = bn.bias.detach().double()  # [C]
    z = m / s
    cdf = 0.5 * (1.0 + torch.erf(-z / math.sqrt(2.0)))  # P(x < 0)
    pdf = torch.exp(-(z**2) / 2.0) / math.sqrt(2.0 * math.pi)
    margin = torch.where(cdf > 0.001, -s * pdf / cdf + m, -3.0 * s)
    return margin.to(bn.weight.dtype)


def stopgrad(x: Tensor) -> Tensor:
    """Stop the gradient (``x.detach()``).

    Args:
        x: ``[B, ...]``.

    Returns:
        ``[B, ...]``.
    """
    return x.detach()


TRANSFORMS: dict[str, Callable[..., Any]] = {
    "softmax": softmax,
    "log_softmax": log_softmax,
    "normalize": normalize,
    "pool": pool,
    "interpolate": interpolate,
    "mean_dist": mean_dist,
    "mean": mean,
    "stopgrad": stopgrad,
    "margin_relu": margin_relu,
    "ofd_margin": ofd_margin,
    "virtual_teacher": virtual_teacher,
}
"""Every transform by its spec name."""
