"""A frozen role's forward for inference: batch norm folded into the convolution before it.

In eval mode a batch norm is an affine map per channel, so ``bn(conv(x))`` equals one
convolution with scaled weights and a shifted bias. :func:`fold_plan` finds such pairs by
watching one forward (the convolution's output goes to the batch norm and to no other module;
each module runs once), leaves out every pair a tap reads inside (the convolution's output, the
batch norm's input or output, or its parameters as OFD's margins do), and checks that the
folded forward gives every tapped value within tolerance of the eager one; otherwise nothing
is folded. The user's model is not changed: while a :class:`FoldPlan` is entered, the folded
modules' ``forward`` is replaced on the instances (their state dicts, checkpoints and hooks
stay as they are), and the fused weights are recomputed on every entry (each forward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FoldPlan", "fold_plan"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class _Pair:
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d
    bn: nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
    names: tuple[str, str]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def fuse(self) -> None:
        """Fold the batch norm's current statistics and affine map into the conv's weights.

        Done on every entry of the plan (each frozen forward), so a weight changed in place
        between forwards is always seen; it costs one pass over the weights, nothing beside a
        batch's convolutions.
        """
        with torch.no_grad():
            bn = self.bn
            assert bn.running_var is not None and bn.running_mean is not None
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            w = self.conv.weight
            self.weight = w * scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype)
            b = self.conv.bias if self.conv.bias is not None else torch.zeros_like(scale)
            shift = (b - bn.running_mean) * scale
            self.bias = (shift + bn.bias if bn.bias is not None else shift).to(w.dtype)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded weight and bias (computed when the plan was entered)."""
        if self.weight is None or self.bias is None:
            self.fuse()
        assert self.weight is not None and self.bias is not None
        return self.weight, self.bias


@dataclass
class FoldPlan:
    """The pairs folded in one model, entered around its frozen forward (``with plan:``)."""

    pairs: list[_Pair] = field(default_factory=list)

    @property
    def folded(self) -> list[tuple[str, str]]:
        """``(convolution, batch norm)`` module paths folded."""
        return [p.names for p in self.pairs]

    def __enter__(self) -> FoldPlan:
        for pair in self.pairs:
            pair.fuse()
            pair.conv.forward = _folded_conv(pair)  # type: ignore[method-assign,assignment]
            pair.bn.forward = _identity  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for pair in self.pairs:
            for m in (pair.conv, pair.bn):
                m.__dict__.pop("forward", None)


_CONV_FUNCTIONS: dict[type[nn.Module], Callable[..., torch.Tensor]] = {
    nn.Conv1d: F.conv1d,
    nn.Conv2d: F.conv2d,
    nn.Conv3d: F.conv3d,
}


def _conv_of(conv: nn.Module) -> Callable[..., torch.Tensor]:
    """The functional convolution of a subclass of ``nn.Conv1d/2d/3d``."""
    return next(f for cls, f in _CONV_FUNCTIONS.items() if isinstance(conv, cls))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _folded_conv(pair: _Pair) -> Callable[[torch.Tensor], torch.Tensor]:
    conv = pair.conv
    convolve = _CONV_FUNCTIONS[type(conv)] if type(conv) in _CONV_FUNCTIONS else _conv_of(conv)

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = pair.fused()  # padding_mode is "zeros" (fold_plan checks)
        return convolve(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    return forward


def _candidates(model: nn.Module, run: Callable[[], Any]) -> list[tuple[str, str]]:
    """``(conv, bn)`` paths where the conv's output went to that batch norm and nowhere else."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    produced: dict[int, str] = {}
    consumers: dict[int, list[str]] = {}
    keep: list[torch.Tensor] = []  # ids stay unique while the tensors live

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        name = names[m]
        calls[name] = calls.get(name, 0) + 1
        for a in args:
            if isinstance(a, torch.Tensor):
                consumers.setdefault(id(a), []).append(name)
                keep.append(a)

    def post(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if isinstance(m, _CONVS) and isinstance(out, torch.Tensor):
            produced[id(out)] = names[m]
            keep.append(out)

    handles = [m.register_forward_pre_hook(pre) for m in names]
    handles += [m.register_forward_hook(post) for m in names if isinstance(m, _CONVS)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for tid, conv in produced.items():
        users = consumers.get(tid, [])
        norms = [u for u in users if isinstance(model.get_submodule(u), _NORMS)]
        if len(norms) != 1 or set(users) - {norms[0]} - _ancestors(norms[0]):
            continue  # read by another module (or by none: not a pair)
        if calls.get(conv) == 1 and calls.get(norms[0]) == 1:
            pairs.append((conv, norms[0]))
    return pairs


def _ancestors(path: str) -> set[str]:
    parts = path.split(".")
    return {".".join(parts[:i]) for i in range(len(parts))}


def fold_plan(
    model: nn.Module,
    run: Callable[[], dict[Any, torch.Tensor]],
    untouchable: Iterable[str],
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> FoldPlan:
    """Plan the folding of ``model`` (in eval mode) for one frozen role.

    Args:
        model: The role's model.
        run: One forward of the role returning its tapped values (``point -> tensor``).
        untouchable: Module paths a tap or a transform reads: no pair containing one (or
            inside one) is folded.
        rtol, atol: How close each folded tapped value must be to the eager one.
    """
    if model.training:
        return FoldPlan()
    banned = set(untouchable)
    pairs = []
    for conv, bn in _candidates(model, run):
        if any(b in (conv, bn) or b.startswith((conv + ".", bn + ".")) for b in banned):
            continue
        c, n = model.get_submodule(conv), model.get_submodule(bn)
        assert isinstance(c, _CONVS) and isinstance(n, _NORMS)
        if n.running_mean is None or n.running_var is None or n.training:
            continue
        if c.weight.shape[0] != n.num_features or c.padding_mode != "zeros":
            continue
        pairs.append(_Pair(c, n, (conv, bn)))
    plan = FoldPlan(pairs)
    if not pairs:
        return plan
    with torch.no_grad():
        eager = {k: v.clone() for k, v in run().items() if isinstance(v, torch.Tensor)}
        with plan:
            folded = run()
    for k, v in eager.items():
        got = folded.get(k)
        if not isinstance(got, torch.Tensor) or got.shape != v.shape:
            return FoldPlan()
        if not torch.allclose(got, v, rtol=rtol, atol=atol * max(1.0, float(v.abs().max()))):
            return FoldPlan()
    return plan
