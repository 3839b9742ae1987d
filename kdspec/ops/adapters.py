"""Learned adapters (connectors, regressors, heads) sized from tapped shapes.

Specs never spell channel counts: the compiler measures the tapped tensors on a dry run and calls
``build_adapter(name, in_shape, out_shape, **params)`` with the shapes *without* the batch dim.
A builder either returns an ``nn.Module`` mapping ``[B, *in_shape]`` to ``[B, *out_shape]`` or
raises :class:`AdapterShapeError` saying why it cannot.

Registered adapters (:data:`ADAPTERS`):

- ``identity``: no-op; the shapes must already agree.
- ``conv1x1``: 1x1 ``Conv2d`` (MGD align conv, FitNets-style hint), no BN.
- ``conv_bn``: 1x1 conv (no bias) + BN, the AB / OFD connector with OFD's init.
- ``regressor``: FitNets ``ConvReg`` exactly as RepDistiller / mdistiller.
- ``linear``: ``Linear`` on vectors (flattening the input) or token-wise on ``[L, D]``.
- ``mlp``: ``Linear-ReLU-Linear`` with the same shape rules as ``linear``.
- ``embed``: CRD embedding head: flatten, ``Linear`` to ``dim`` (128), L2-normalise.
- ``classifier_head``: BYOT-style auxiliary exit producing ``num_classes`` logits.
- ``vid_regressor``: VID mean regressor plus per-channel variance; returns ``(mean, var)``.

Conv adapters other than ``regressor`` resize the student map to the target's spatial size
(adaptive average pooling when shrinking, bilinear interpolation otherwise) before the conv.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ADAPTERS",
    "AdapterShapeError",
    "ClassifierHead",
    "ConvReg",
    "Embed",
    "Resize",
    "VIDRegressor",
    "build_adapter",
]

Shape = tuple[int, ...]


class AdapterShapeError(ValueError):
    """An adapter of the requested kind cannot map ``in_shape`` to ``out_shape``."""


def _fail(name: str, in_shape: Shape, out_shape: Shape | None, why: str) -> AdapterShapeError:
    shown = "an unspecified shape" if out_shape is None else f"{list(out_shape)}"
    return AdapterShapeError(f"adapter `{name}` cannot map {list(in_shape)} to {shown}: {why}")


def _need_maps(name: str, in_shape: Shape, out_shape: Shape | None) -> Shape:
    """Check both shapes are ``(C, H, W)``; return ``out_shape``."""
    if out_shape is None:
        raise _fail(name, in_shape, out_shape, "it needs the target shape")
    if len(in_shape) != 3 or len(out_shape) != 3:
        raise _fail(name, in_shape, out_shape, "it maps feature maps [C, H, W] to [C', H', W']")
    return out_shape


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class Resize(nn.Module):
    """Resize a feature map to a fixed spatial size.

    Adaptive average pooling when both sides shrink (or stay), bilinear interpolation
    (``align_corners=False``) otherwise.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        """Create the resize.

        Args:
            size: Target ``(h, w)``.
        """
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        """Resize.

        Args:
            x: ``[B, C, H, W]``.

        Returns:
            ``[B, C, h, w]``.
        """
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        if h >= self.size[0] and w >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        """Show the target size in ``repr``."""
        return f"size={self.size}"


class ConvReg(nn.Module):
    """FitNets convolutional regressor (RepDistiller / mdistiller ``ConvReg``).

    ``s_H == 2 t_H``: 3x3 conv, stride 2, padding 1; ``2 s_H == t_H``: 4x4 transposed conv,
    stride 2, padding 1; ``s_H >= t_H``: conv with kernel ``(1 + s_H - t_H, 1 + s_W - t_W)``.
    Then BN and (optionally) ReLU.
    """

    def __init__(self, in_shape: Shape, out_shape: Shape, use_relu: bool = True) -> None:
        """Pick the conv branch from the spatial sizes.

        Args:
            in_shape: Student ``(C, H, W)``.
            out_shape: Teacher ``(C', H', W')``.
            use_relu: Apply ReLU after BN.

        Raises:
            AdapterShapeError: No branch produces ``out_shape``.
        """
        super().__init__()
        s_c, s_h, s_w = in_shape
        t_c, t_h, t_w = out_shape
        self.conv: nn.Module
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
            got = ((s_h - 1) // 2 + 1, (s_w - 1) // 2 + 1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
            got = (2 * s_h, 2 * s_w)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
            got = (t_h, t_w)
        else:
            raise _fail(
                "regressor",
                in_shape,
                out_shape,
                "the student map must be larger than, equal to, or half the teacher's size",
            )
        if got != (t_h, t_w):
            raise _fail(
                "regressor",
                in_shape,
                out_shape,
                f"the chosen conv gives spatial size {list(got)}, not {[t_h, t_w]}",
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        """Regress.

        Args:
            x: ``[B, C, H, W]``.

        Returns:
            ``[B, C', H', W']``.
        """
        y = self.bn(self.conv(x))
        return F.relu(y) if self.use_relu else y


class Embed(nn.Module):
    """CRD embedding head: flatten, ``Linear``, L2-normalise."""

    def __init__(self, in_features: int, dim: int) -> None:
        """Create the head.

        Args:
            in_features: Flattened input size.
            dim: Embedding size.
        """
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Embed.

        Args:
            x: ``[B, ...]``.

        Returns:
            ``[B, dim]``, unit L2 norm.
        """
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), p=2.0, dim=1)


class ClassifierHead(nn.Module):
    """BYOT-style auxiliary classifier.

    Feature maps: 1x1 conv bottleneck + BN + ReLU, global average pool, ``Linear``. Vectors:
    ``Linear``.
    """

    def __init__(self, in_shape: Shape, num_classes: int, hidden: int | None = None) -> None:
        """Create the head.

        Args:
            in_shape: ``(C, H, W)`` or ``(D,)``.
            num_classes: Number of logits.
            hidden: Bottleneck channels (feature maps only; default C).
        """
        super().__init__()
        self.body: nn.Module
        if len(in_shape) == 3:
            width = hidden or in_shape[0]
            self.body = nn.Sequential(
                nn.Conv2d(in_shape[0], width, kernel_size=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        else:
            width = in_shape[0]
            self.body = nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Classify.

        Args:
            x: ``[B, C, H, W]`` or ``[B, D]``.

        Returns:
            ``[B, num_classes]`` logits.
        """
        logits: Tensor = self.fc(self.body(x))
        return logits


class VIDRegressor(nn.Module):
    """VID variational regressor (RepDistiller ``VIDLoss`` / torchdistill ``Regressor4VID``).

    Three bias-free 1x1 convs with ReLU between them predict the mean; a per-channel parameter
    gives the variance ``softplus(log_scale) + eps``, initialised to ``init_pred_var``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        size: tuple[int, int],
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        """Create the regressor.

        Args:
            in_channels: Student channels.
            mid_channels: Hidden channels (the references use the teacher's channel count).
            out_channels: Teacher channels.
            size: Teacher ``(H, W)``; the student map is resized to it first.
            init_pred_var: Initial variance.
            eps: Variance floor.
        """
        super().__init__()
        self.resize = Resize(size)
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
        )
        init = math.log(math.expm1(init_pred_var - eps))  # softplus^-1(init_pred_var - eps)
        self.log_scale = nn.Parameter(torch.full((out_channels,), init))
        self.eps = eps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predict the Gaussian over the teacher features.

        Args:
            x: Student ``[B, C, H, W]``.

        Returns:
            ``(mean [B, C', H', W'], var [1, C', 1, 1])``.
        """
        mu = self.regressor(self.resize(x))
        var = F.softplus(self.log_scale) + self.eps  # [C']
        return mu, var.view(1, -1, 1, 1)


# --------------------------------------------------------------------------------------------
# Builders: (in_shape, out_shape, **params) -> nn.Module
# --------------------------------------------------------------------------------------------


def _identity(in_shape: Shape, out_shape: Shape | None) -> nn.Module:
    if out_shape is not None and out_shape != in_shape:
        raise _fail("identity", in_shape, out_shape, "the shapes differ")
    return nn.Identity()


def _conv(in_shape: Shape, out_shape: Shape, layers: list[nn.Module]) -> nn.Sequential:
    if in_shape[1:] != out_shape[1:]:
        layers = [Resize((out_shape[1], out_shape[2])), *layers]
    return nn.Sequential(*layers)


def _conv1x1(in_shape: Shape, out_shape: Shape | None, bias: bool = True) -> nn.Module:
    out = _need_maps("conv1x1", in_shape, out_shape)
    return _conv(in_shape, out, [nn.Conv2d(in_shape[0], out[0], 1, bias=bias)])


def _conv_bn(in_shape: Shape, out_shape: Shape | None) -> nn.Module:
    out = _need_maps("conv_bn", in_shape, out_shape)
    conv = nn.Conv2d(in_shape[0], out[0], kernel_size=1, bias=False)
    # OFD / mdistiller ConnectorConvBN init: He normal over fan-out, BN at identity.
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / out[0]))
    bn = nn.BatchNorm2d(out[0])
    return _conv(in_shape, out, [conv, bn])


def _regressor(in_shape: Shape, out_shape: Shape | None, use_relu: bool = True) -> nn.Module:
    out = _need_maps("regressor", in_shape, out_shape)
    return ConvReg(in_shape, out, use_relu=use_relu)


def _vector_plan(
    name: str, in_shape: Shape, out_shape: Shape | None, dim: int | None
) -> tuple[bool, int, int]:
    """Decide how a linear-style adapter maps shapes.

    Returns:
        ``(flatten_input, in_features, out_features)``.
    """
    if out_shape is None:
        if dim is None:
            raise _fail(name, in_shape, out_shape, "give the target shape or `dim`")
        if len(in_shape) <= 2:
            return False, in_shape[-1], dim
        return True, math.prod(in_shape), dim
    if len(out_shape) == 1:
        return len(in_shape) > 1, math.prod(in_shape), dim or out_shape[0]
    if len(out_shape) == 2 and len(in_shape) == 2 and in_shape[0] == out_shape[0]:
        return False, in_shape[1], dim or out_shape[1]
    raise _fail(
        name, in_shape, out_shape, "it maps [...] -> [D'] (flattening) or [L, D] -> [L, D'] only"
    )


def _linear(
    in_shape: Shape, out_shape: Shape | None, dim: int | None = None, bias: bool = True
) -> nn.Module:
    flat, d_in, d_out = _vector_plan("linear", in_shape, out_shape, dim)
    lin = nn.Linear(d_in, d_out, bias=bias)
    return nn.Sequential(nn.Flatten(), lin) if flat else lin


def _mlp(
    in_shape: Shape, out_shape: Shape | None, hidden: int | None = None, dim: int | None = None
) -> nn.Module:
    flat, d_in, d_out = _vector_plan("mlp", in_shape, out_shape, dim)
    width = hidden or d_in
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, d_out)]
    if flat:
        layers.insert(0, nn.Flatten())
    return nn.Sequential(*layers)


def _embed(in_shape: Shape, out_shape: Shape | None, dim: int = 128) -> nn.Module:
    if out_shape is not None and len(out_shape) != 1:
        raise _fail("embed", in_shape, out_shape, "it produces vectors [dim]")
    size = dim
    if out_shape is not None and out_shape[0] != dim:
        raise _fail("embed", in_shape, out_shape, f"`dim` {dim} contradicts the target shape")
    return Embed(math.prod(in_shape), size)


def _classifier_head(
    in_shape: Shape,
    out_shape: Shape | None,
    num_classes: int | None = None,
    hidden: int | None = None,
) -> nn.Module:
    if out_shape is not None and len(out_shape) != 1:
        raise _fail("classifier_head", in_shape, out_shape, "it produces logits [num_classes]")
    k = num_classes or (out_shape[0] if out_shape is not None else None)
    if k is None:
        raise _fail("classifier_head", in_shape, out_shape, "give `num_classes` or the target")
    if out_shape is not None and out_shape[0] != k:
        raise _fail("classifier_head", in_shape, out_shape, f"`num_classes` {k} contradicts it")
    if len(in_shape) not in (1, 3):
        raise _fail("classifier_head", in_shape, out_shape, "input must be [C, H, W] or [D]")
    return ClassifierHead(in_shape, k, hidden=hidden)


def _vid_regressor(
    in_shape: Shape,
    out_shape: Shape | None,
    mid: int | None = None,
    init_pred_var: float = 5.0,
    eps: float = 1e-5,
) -> nn.Module:
    out = _need_maps("vid_regressor", in_shape, out_shape)
    if init_pred_var <= eps:
        raise ValueError(f"init_pred_var must exceed eps ({eps}), got {init_pred_var}")
    return VIDRegressor(
        in_shape[0], mid or out[0], out[0], (out[1], out[2]), init_pred_var=init_pred_var, eps=eps
    )


ADAPTERS: dict[str, Callable[..., nn.Module]] = {
    "identity": _identity,
    "conv1x1": _conv1x1,
    "conv_bn": _conv_bn,
    "regressor": _regressor,
    "linear": _linear,
    "mlp": _mlp,
    "embed": _embed,
    "classifier_head": _classifier_head,
    "vid_regressor": _vid_regressor,
}
"""Adapter builders ``(in_shape, out_shape, **params) -> nn.Module`` by spec name."""


def _as_shape(name: str, shape: Sequence[int]) -> Shape:
    out = tuple(int(d) for d in shape)
    if any(d <= 0 for d in out):
        raise AdapterShapeError(f"adapter `{name}`: shape {list(out)} has a non-positive size")
    return out


def build_adapter(
    name: str,
    in_shape: Sequence[int],
    out_shape: Sequence[int] | None,
    **params: Any,
) -> nn.Module:
    """Build the adapter ``name`` mapping ``[B, *in_shape]`` to ``[B, *out_shape]``.

    Args:
        name: A key of :data:`ADAPTERS`.
        in_shape: Student tensor shape without the batch dim, e.g. ``(64, 8, 8)``.
        out_shape: Target shape without the batch dim, or None where the adapter sizes itself
            from ``params`` (``identity``, ``embed``, ``classifier_head``, ``linear``/``mlp``
            with ``dim``).
        **params: Adapter-specific options (``dim``, ``hidden``, ``num_classes``, ``use_relu``,
            ``bias``, ``mid``, ``init_pred_var``, ``eps``); unknown ones raise ``TypeError``.

    Returns:
        A freshly initialised module (float32, CPU).

    Raises:
        AdapterShapeError: This kind of adapter cannot map the shapes.
        ValueError: Unknown adapter name.
    """
    builder = ADAPTERS.get(name)
    if builder is None:
        raise ValueError(f"unknown adapter `{name}`; known: {', '.join(sorted(ADAPTERS))}")
    src = _as_shape(name, in_shape)
    dst = None if out_shape is None else _as_shape(name, out_shape)
    return builder(src, dst, **params)
