"""The tensor primitives of the language, laid out by axis names.

Each primitive takes its tensor inputs, ``axes`` (the static axes of every input, from
:func:`kdspec.vocabulary.axes.infer`; None where unknown) and the keyword parameters its
vocabulary entry declares, with the same defaults (``tests/ops/test_primitives.py`` binds every
declaration against these signatures). A tensor's dimensions follow its axes in order; ``space``
covers every dimension the others leave (``H, W``, one, or none).
"""

from __future__ import annotations

import builtins
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdspec.ops.transforms import mean as combine
from kdspec.ops.transforms import normalize as per_sample
from kdspec.vocabulary import FUNCTIONS
from kdspec.vocabulary.axes import Axes, over_axes, positional

AxesIn = Sequence[Axes | None]
# The label of a row (or token) without a class: no loss there (F.cross_entropy's ignore_index).
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# Layout: axis names -> tensor dimensions
# --------------------------------------------------------------------------------------------


def spans(axes: Axes, ndim: int) -> list[int]:
    """How many tensor dimensions each axis covers (``space`` takes what the others leave).

    Without ``space``, ``token`` covers one dimension or none (the logits of a sequence
    classifier read from token data have no token dimension).
    """
    elastic = "space" if "space" in axes else "token" if "token" in axes else None
    rest = ndim - (len(axes) - 1)
    if elastic == "token":
        rest = builtins.min(builtins.max(rest, 0), 1)
    out = [builtins.max(rest, 0) if a == elastic else 1 for a in axes]
    if builtins.sum(out) != ndim:
        raise ValueError(
            f"a tensor of {ndim} dimensions cannot have the axes ({', '.join(axes)}); read "
            "token features with `tokens(x)`, or one row per token with `rows(x)`"
        )
    return out


def dims(axes: Axes | None, x: Tensor, over: object) -> list[int]:
    """The dimensions of ``x`` along the named axes (the last one when ``over`` is None)."""
    if over is None:
        return [x.dim() - 1]
    if positional(over):  # torch dimensions (the `dim=` of a legacy loss)
        items: list[Any] = list(over) if isinstance(over, list | tuple) else [over]
        picked = sorted({int(i) % x.dim() for i in items if -x.dim() <= int(i) < x.dim()})
        if len(picked) != len({int(i) for i in items}):
            raise ValueError(f"dimensions {over} do not fit a tensor of {x.dim()} dimensions")
        return picked
    if axes is None:
        # `all` and `sample` need no axis names: every dimension, or every one but the batch;
        # the batch is the first dimension of every value that has one.
        if over in ("all", "sample", "batch"):
            return [0] if over == "batch" else list(range(0 if over == "all" else 1, x.dim()))
        raise ValueError(f"the axes of this value are unknown, so `over={over}` cannot be placed")
    names = over_axes(over, of=axes)
    out: list[int] = []
    start = 0
    for a, n in zip(axes, spans(axes, x.dim()), strict=True):
        if a in names:
            out.extend(range(start, start + n))
        start += n
    return out


def align(small: Tensor, s_axes: Axes, big_axes: Axes, big_ndim: int) -> Tensor:
    """View ``small`` so that torch broadcasting lines its axes up with ``big_axes`` by name."""
    s_spans = spans(s_axes, small.dim())
    shape: list[int] = []
    j = k = 0
    for ax, n in zip(big_axes, spans(big_axes, big_ndim), strict=True):
        if k < len(s_axes) and s_axes[k] == ax:
            m = s_spans[k]
            shape.extend(small.shape[j : j + m])
            shape.extend([1] * (n - m))
            j += m
            k += 1
        else:
            shape.extend([1] * n)
    return small.reshape(shape)


def elementwise_inputs(values: Sequence[Any], axes: AxesIn) -> list[Any]:
    """Line up the inputs of an element-wise operation by axis name (numbers pass through)."""
    known = [
        (a, v) for a, v in zip(axes, values, strict=True) if a is not None and isinstance(v, Tensor)
    ]
    tensors = [v for v in values if isinstance(v, Tensor) and v.dim() > 0]
    if any(a is None for a, v in zip(axes, values, strict=True) if isinstance(v, Tensor)):
        # Without axis names nothing says how dimensions line up: equal counts only (size-1
        # dimensions broadcast), never torch's silent alignment from the right.
        if len({v.dim() for v in tensors}) > 1:
            shapes = " and ".join(str(list(v.shape)) for v in tensors)
            raise ValueError(f"values of unknown axes with different numbers of dims: {shapes}")
        return list(values)
    if len(known) < 2:
        return list(values)
    big_axes, big = builtins.max(known, key=lambda p: len(p[0]))
    out = []
    for a, v in zip(axes, values, strict=True):
        if isinstance(v, Tensor) and a is not None and a != big_axes:
            v = align(v, a, big_axes, big.dim())
        out.append(v)
    return out


# --------------------------------------------------------------------------------------------
# Element-wise
# --------------------------------------------------------------------------------------------


def exp(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.exp(x)


def log(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.log(x)


def abs(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.abs(x)


def sqrt(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.sqrt(x)


def sigmoid(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.sigmoid(x)


def softplus(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return F.softplus(x)


def relu(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.relu(x)


def tanh(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return torch.tanh(x)


def clamp(
    x: Tensor, *, axes: AxesIn = (), min: float | None = None, max: float | None = None
) -> Tensor:
    return torch.clamp(x, min=min, max=max)


def pow(x: Tensor, *, axes: AxesIn = (), p: float) -> Tensor:
    return torch.pow(x, p)


def where(cond: Tensor, a: Any, b: Any, *, axes: AxesIn = ()) -> Tensor:
    cond, a, b = elementwise_inputs([cond, a, b], list(axes) or [None] * 3)
    return torch.where(torch.as_tensor(cond) != 0, a, b)


def gaussian(mean: Tensor, var: Tensor, *, axes: AxesIn = ()) -> tuple[Tensor, Tensor]:
    return mean, var


def gaussian_mean(g: tuple[Tensor, Tensor], *, axes: AxesIn = ()) -> Tensor:
    return g[0]


def gaussian_var(g: tuple[Tensor, Tensor], *, axes: AxesIn = ()) -> Tensor:
    return g[1]


def choose(cond: Any, a: Any, b: Any, *, axes: AxesIn = ()) -> Any:
    """``a`` if ``cond`` else ``b`` (the compiler builds only the chosen one)."""
    return a if cond else b


BINARY: dict[str, Any] = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.div,
    "^": torch.pow,
    "<": torch.lt,
    ">": torch.gt,
    "<=": torch.le,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}
COMPARISONS = frozenset({"<", ">", "<=", ">=", "==", "!="})


def binary(op: str, a: Any, b: Any, axes: AxesIn) -> Any:
    """``a op b`` lined up by axis name; comparisons give 1.0/0.0 masks (no gradient)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = torch.as_tensor(a, dtype=torch.get_default_dtype())
    a, b = elementwise_inputs([a, b], axes)
    out = BINARY[op](a, b)
    if op in COMPARISONS:
        ref = a if isinstance(a, Tensor) and a.is_floating_point() else b
        dtype = ref.dtype if isinstance(ref, Tensor) and ref.is_floating_point() else None
        return out.to(dtype or torch.get_default_dtype())
    return out


# --------------------------------------------------------------------------------------------
# Along an axis
# --------------------------------------------------------------------------------------------


def softmax(
    x: Tensor, *, axes: AxesIn = (), T: float = 1.0, over: object = None, mask: Any = None
) -> Tensor:
    """Temperature softmax along ``over``, as log-probabilities (how distributions are kept)."""
    return log_softmax(x, axes=axes, T=T, over=over, mask=mask)


def log_softmax(
    x: Tensor, *, axes: AxesIn = (), T: float = 1.0, over: object = None, mask: Any = None
) -> Tensor:
    """Along tokens, the masked positions get no probability (a finite log-probability far
    below the others, as Hugging Face's attention masks, so that ``0 * log 0`` stays 0)."""
    z = x / T
    keep = token_mask(x, axes[0] if axes else None, over, mask)
    if keep is not None:
        z = z.masked_fill(~keep, torch.finfo(x.dtype).min)
    d = dims(axes[0] if axes else None, x, over)
    if len(d) != 1:
        # Several dims (e.g. space = H, W): one distribution over all of them.
        moved = torch.movedim(z, d, list(range(x.dim() - len(d), x.dim())))
        flat = moved.reshape(*moved.shape[: x.dim() - len(d)], -1)
        out = F.log_softmax(flat, dim=-1).reshape(moved.shape)
        return torch.movedim(out, list(range(x.dim() - len(d), x.dim())), d)
    return F.log_softmax(z, dim=d[0])


def normalize(x: Tensor, *, axes: AxesIn = (), p: float = 2.0, over: object = None) -> Tensor:
    """Lp-normalise along ``over``; without it, per sample (the legacy transform)."""
    if over is None:
        return per_sample(x, p=p)
    d = dims(axes[0] if axes else None, x, over)
    n = torch.linalg.vector_norm(x, ord=p, dim=d, keepdim=True)
    return x / n.clamp_min(1e-12)


def _reduce_dims(x: Tensor, axes: AxesIn, over: object) -> list[int]:
    return dims(axes[0] if axes else None, x, over)


def _reduction(fn: Any) -> Any:
    """A reduction along axes that cover no dimension (a token axis on data without tokens,
    the space of pooled features) leaves x as it is (torch would reduce every dimension)."""

    @functools.wraps(fn)
    def wrapper(*xs: Tensor, axes: AxesIn = (), over: object = None, **kw: Any) -> Tensor:
        if over is not None and len(xs) == 1 and not _reduce_dims(xs[0], axes, over):
            return xs[0]
        return fn(*xs, axes=axes, over=over, **kw)

    return wrapper


def token_mask(x: Tensor, axes: Axes | None, over: object, mask: Tensor | None) -> Tensor | None:
    """The batch's ``[B, L]`` token mask viewed against ``x`` for the token axes in ``over``.

    None when nothing is masked: no mask, or no ``token``/``token2`` dimension among ``over``.
    Both axes of a token relation (batch, token, token2) are masked by the same mask.
    """
    if mask is None or axes is None or over is None:
        return None
    try:
        names = over_axes(over, of=axes)  # `all`, `sample`: the value's own axes
    except ValueError:  # torch dimensions (`over=1`) name positions, not axes
        return None
    sp = spans(axes, x.dim())
    starts = [builtins.sum(sp[:i]) for i in range(len(axes))]
    out: Tensor | None = None
    for name in ("token", "token2"):
        if name not in names or name not in axes or sp[axes.index(name)] != 1:
            continue
        if "batch" not in axes:
            raise ValueError("masking tokens needs the batch axis")
        b, t = starts[axes.index("batch")], starts[axes.index(name)]
        if x.shape[b] != mask.shape[0]:  # rows of tokens (`rows`): no longer per sample
            return None
        if (x.shape[b], x.shape[t]) != tuple(mask.shape):
            raise ValueError(
                f"the token mask is {tuple(mask.shape)} (batch, tokens), but this value has "
                f"{x.shape[b]} samples and {x.shape[t]} tokens"
            )
        shape = [1] * x.dim()
        shape[b], shape[t] = mask.shape[0], mask.shape[1]
        view = mask.to(torch.bool).reshape(shape)
        out = view if out is None else out & view
    return out


def _fill(x: Tensor, keep: Tensor | None, value: float) -> Tensor:
    return x if keep is None else x.masked_fill(~keep, value)


@_reduction
def sum(x: Tensor, *, axes: AxesIn = (), over: object, mask: Any = None) -> Tensor:
    keep = token_mask(x, axes[0] if axes else None, over, mask)
    return _fill(x, keep, 0.0).sum(dim=_reduce_dims(x, axes, over))


@_reduction
def mean(
    *xs: Tensor,
    axes: AxesIn = (),
    weights: Any = None,
    over: object = None,
    mask: Any = None,
    groups: int | None = None,
) -> Tensor:
    """With ``over``: the mean along axes (over tokens, of the tokens the mask keeps); with
    ``groups=n`` too, n means of consecutive groups along one axis (12 heads to 2); else the
    (weighted) mean of several tensors."""
    if over is None:
        return combine(*xs, weights=weights)
    (x,) = xs
    d = _reduce_dims(x, axes, over)
    if groups is not None:
        return _group_mean(x, d, int(groups), over)
    keep = token_mask(x, axes[0] if axes else None, over, mask)
    if keep is None:
        return x.mean(dim=d)
    count = keep.expand_as(x).to(x.dtype).sum(dim=d)
    return _fill(x, keep, 0.0).sum(dim=d) / count.clamp_min(1.0)


def _group_mean(x: Tensor, d: list[int], groups: int, over: object) -> Tensor:
    (dim,) = d
    n = x.shape[dim]
    if n % groups:
        raise ValueError(f"the {n} entries along `{over}` do not split into {groups} equal groups")
    shape = [*x.shape[:dim], groups, n // groups, *x.shape[dim + 1 :]]
    return x.reshape(shape).mean(dim=dim + 1)


def _unmasked(func: str, x: Tensor, axes: AxesIn, over: object, mask: Any) -> None:
    if token_mask(x, axes[0] if axes else None, over, mask) is not None:
        raise ValueError(
            f"`{func}` over tokens does not leave the batch's padding out; write it with "
            f"`mean`/`sum`, or say `mask=none` to take every position"
        )


@_reduction
def std(
    x: Tensor, *, axes: AxesIn = (), correction: int = 1, over: object, mask: Any = None
) -> Tensor:
    _unmasked("std", x, axes, over, mask)
    return torch.std(x, dim=_reduce_dims(x, axes, over), correction=correction)


@_reduction
def var(
    x: Tensor, *, axes: AxesIn = (), correction: int = 1, over: object, mask: Any = None
) -> Tensor:
    _unmasked("var", x, axes, over, mask)
    return torch.var(x, dim=_reduce_dims(x, axes, over), correction=correction)


def _flat(x: Tensor, d: list[int]) -> Tensor:
    """Move the dims ``d`` to the end and merge them into one."""
    moved = torch.movedim(x, d, list(range(x.dim() - len(d), x.dim())))
    return moved.reshape(*moved.shape[: x.dim() - len(d)], -1)


def _masked(x: Tensor, axes: AxesIn, over: object, mask: Any, value: float) -> Tensor:
    return _fill(x, token_mask(x, axes[0] if axes else None, over, mask), value)


@_reduction
def max(x: Tensor, *, axes: AxesIn = (), over: object, mask: Any = None) -> Tensor:
    return torch.amax(_masked(x, axes, over, mask, -math.inf), dim=_reduce_dims(x, axes, over))


@_reduction
def min(x: Tensor, *, axes: AxesIn = (), over: object, mask: Any = None) -> Tensor:
    return torch.amin(_masked(x, axes, over, mask, math.inf), dim=_reduce_dims(x, axes, over))


@_reduction
def logsumexp(x: Tensor, *, axes: AxesIn = (), over: object, mask: Any = None) -> Tensor:
    masked = _masked(x, axes, over, mask, -math.inf)
    return torch.logsumexp(masked, dim=_reduce_dims(x, axes, over))


@_reduction
def norm(x: Tensor, *, axes: AxesIn = (), p: float = 2.0, over: object, mask: Any = None) -> Tensor:
    masked = _masked(x, axes, over, mask, 0.0)
    return torch.linalg.vector_norm(masked, ord=p, dim=_reduce_dims(x, axes, over))


@_reduction
def median(x: Tensor, *, axes: AxesIn = (), over: object, mask: Any = None) -> Tensor:
    _unmasked("median", x, axes, over, mask)
    return _flat(x, _reduce_dims(x, axes, over)).median(dim=-1).values


@_reduction
def quantile(
    x: Tensor, *, axes: AxesIn = (), q: float = 0.5, over: object, mask: Any = None
) -> Tensor:
    _unmasked("quantile", x, axes, over, mask)
    return torch.quantile(_flat(x, _reduce_dims(x, axes, over)), q, dim=-1)


def topk(x: Tensor, *, axes: AxesIn = (), k: int = 1, over: object = None) -> Tensor:
    (d,) = dims(axes[0] if axes else None, x, over)[:1] or [x.dim() - 1]
    idx = x.detach().topk(int(k), dim=d).indices
    return torch.zeros_like(x).scatter(d, idx, 1.0)


def rank(x: Tensor, *, axes: AxesIn = (), over: object = None) -> Tensor:
    (d,) = dims(axes[0] if axes else None, x, over)[:1] or [x.dim() - 1]
    order = x.detach().argsort(dim=d, descending=True)
    return order.argsort(dim=d).to(x.dtype if x.is_floating_point() else torch.get_default_dtype())


# --------------------------------------------------------------------------------------------
# Relations
# --------------------------------------------------------------------------------------------


def _rows(x: Tensor, axes: Axes, over: str) -> Tensor:
    """``[*keep, N, D]``: kept axes (batch, head) first, the rows along ``over``, the rest flat."""
    sp = spans(axes, x.dim())
    starts = [0]
    for n in sp:
        starts.append(starts[-1] + n)
    keep = [a for a in axes if a in ("batch", "head") and a != over]
    order: list[int] = []
    for group in (keep, [over]):
        for a in group:
            i = axes.index(a)
            order.extend(range(starts[i], starts[i + 1]))
    rest = [d for d in range(x.dim()) if d not in order]
    moved = x.permute(*order, *rest)
    lead = moved.shape[: len(order)]
    n_keep = len(keep)
    rows = int(torch.tensor(lead[n_keep:]).prod()) if len(lead) > n_keep else 1
    return moved.reshape(*lead[:n_keep], rows, -1)


def relation(
    x: Tensor,
    y: Tensor | None = None,
    *,
    axes: AxesIn = (),
    over: object,
    kernel: str = "dot",
    gamma: float = 1.0,
    mask: Any = None,
) -> Tensor:
    """Relation matrix between the rows of x (and y) along ``over``; ``[*keep, N, N]``.

    Over tokens, with the batch's mask, the relations with masked tokens (the columns, as
    attention masks keys; TinyBERT zeroes them) are 0.
    """
    out = _relation(x, y, axes=axes, over=over, kernel=kernel, gamma=gamma)
    ax = axes[0] if axes else None
    if mask is None or ax is None or over_axes(over) != ("token",) or ax[0] != "batch":
        return out
    if "token" not in ax or spans(ax, x.dim())[ax.index("token")] != 1:
        return out
    keys = mask.to(torch.bool).reshape(mask.shape[0], *([1] * (out.dim() - 2)), mask.shape[1])
    return out.masked_fill(~keys, 0.0)


def _relation(
    x: Tensor, y: Tensor | None, *, axes: AxesIn, over: object, kernel: str, gamma: float
) -> Tensor:
    ax = axes[0] if axes else None
    if ax is None:
        raise ValueError("`relation` needs the axes of its input")
    (name,) = over_axes(over)
    a = _rows(x, ax, name)
    b = a if y is None else _rows(y, ax, name)
    if kernel == "dot":
        return a @ b.transpose(-1, -2)
    if kernel == "cosine":
        an = F.normalize(a, dim=-1, eps=1e-12)
        bn = F.normalize(b, dim=-1, eps=1e-12)
        return an @ bn.transpose(-1, -2)
    sq = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)
    if kernel == "sqdistance":
        return sq
    if kernel == "distance":
        return sq.clamp_min(1e-12).sqrt() * (sq > 0)
    if kernel == "rbf":
        return torch.exp(-gamma * sq)
    raise ValueError(f"unknown kernel `{kernel}` (dot, cosine, rbf, distance, sqdistance)")


def differences(x: Tensor, *, axes: AxesIn = (), over: object) -> Tensor:
    """``out[..., i, j, ...] = x_j - x_i`` along ``over``: ``[*keep, N, N, *rest]``."""
    ax = axes[0] if axes else None
    if ax is None:
        raise ValueError("`differences` needs the axes of its input")
    (name,) = over_axes(over)
    keep = [a for a in ax if a in ("batch", "head") and a != name]
    first = [d for a in (*keep, name) for d in dims(ax, x, a)]
    moved = x.permute(*first, *[d for d in range(x.dim()) if d not in first])
    k = len(keep)
    return moved.unsqueeze(k) - moved.unsqueeze(k + 1)


def shrink(x: Tensor, y: Tensor, *, axes: AxesIn = (), mode: str = "avg") -> Tensor:
    """x adaptively pooled over ``space`` to the smaller of its and y's size in each dimension."""
    if x.dim() != 4 or y.dim() != 4:
        raise ValueError(
            f"`shrink` pools [B, C, H, W] maps, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    hw = (builtins.min(x.shape[2], y.shape[2]), builtins.min(x.shape[3], y.shape[3]))
    if tuple(x.shape[-2:]) == hw:
        return x
    if mode == "max":
        return F.adaptive_max_pool2d(x, hw)
    if mode != "avg":
        raise ValueError(f"`shrink` mode must be 'avg' or 'max', got {mode!r}")
    return F.adaptive_avg_pool2d(x, hw)


def eye(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    """1 where a relation matrix's row and column are the same, 0 elsewhere (no gradient)."""
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.eye(x.shape[-2], x.shape[-1], dtype=dtype, device=x.device).expand(x.shape)


def diag(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    """The diagonal of a relation matrix: ``(..., N, N) -> (..., N)``."""
    return torch.diagonal(x, dim1=-2, dim2=-1)


def select(x: Tensor, *, axes: AxesIn = (), over: object, index: int = 0) -> Tensor:
    """The entries at position ``index`` of the axis ``over`` (the axis goes away)."""
    (d,) = dims(axes[0] if axes else None, x, over)
    return x.select(d, int(index))


def random(x: Tensor, *, axes: AxesIn = (), over: object = None) -> Tensor:
    """Uniform random numbers in [0, 1), drawn anew on every call (torch's generator): one per
    entry of x, or with ``over`` one per position of those axes (size 1 along the others)."""
    shape = list(x.shape)
    if over is not None:
        keep = set(dims(axes[0] if axes else None, x, over))
        shape = [n if d in keep else 1 for d, n in enumerate(shape)]
    return torch.rand(shape, dtype=x.dtype, device=x.device)


def merge(x: Tensor, *, axes: AxesIn = (), over: object) -> Tensor:
    """The adjacent axes ``over`` joined into one (``merge(x, over=sample)``: ``[B, ...] ->
    [B, D]``); axes that cover no dimension (a pooled ``space``) join as one of size 1."""
    ax = axes[0] if axes else None
    ds = dims(ax, x, over)
    if ds and ds != list(range(ds[0], ds[-1] + 1)):
        raise ValueError(f"`merge` joins adjacent dimensions, got {ds}")
    if ds:
        return x.flatten(ds[0], ds[-1])
    names = over_axes(over, of=ax) if ax is not None else ()
    if ax is None or not names:  # `over=sample` of one value per sample: [B] -> [B, 1]
        return x.unsqueeze(-1)
    first = next(i for i, a in enumerate(ax) if a in names)
    return x.unsqueeze(builtins.sum(spans(ax, x.dim())[:first]))


def stack(*xs: Tensor, axes: AxesIn = (), over: object) -> Tensor:
    """The inputs side by side along a new last axis."""
    return torch.stack(torch.broadcast_tensors(*xs), dim=-1)


def concat(*xs: Tensor, axes: AxesIn = (), over: object) -> Tensor:
    """The inputs end to end along their axis ``over``."""
    (d,) = dims(axes[0] if axes else None, xs[0], over)
    return torch.cat(xs, dim=d)


# --------------------------------------------------------------------------------------------
# Labels, shapes, gradients, retyping
# --------------------------------------------------------------------------------------------


def label_mask(
    x: Tensor,
    *,
    axes: AxesIn = (),
    labels: Tensor,
    target: str = "label",
    views: Tensor | None = None,
) -> Tensor:
    if target == "view":  # the class target is the index of each row's view (rotations)
        assert views is not None, "the compiler passes the view indices"
        labels = views
    (d,) = dims(axes[0] if axes else None, x, "class")
    # A row whose label is the ignore index has no class: a row of zeros.
    ignored = labels == IGNORE_INDEX
    onehot = F.one_hot(labels.masked_fill(ignored, 0), num_classes=x.shape[d]).to(x.dtype)
    onehot = onehot * (~ignored).unsqueeze(-1).to(x.dtype)
    if labels.dim() > 1 and d == x.dim() - 1 and tuple(labels.shape) == tuple(x.shape[:-1]):
        return onehot  # a label per position (tokens [B, L] of [B, L, V] logits)
    onehot = onehot.reshape(
        labels.shape[0], *([1] * (d - 1)), x.shape[d], *([1] * (x.dim() - d - 1))
    )
    return onehot.expand_as(x)


def at_label(
    x: Tensor,
    *,
    axes: AxesIn = (),
    labels: Tensor,
    target: str = "label",
    views: Tensor | None = None,
) -> Tensor:
    (d,) = dims(axes[0] if axes else None, x, "class")
    mask = label_mask(x, axes=axes, labels=labels, target=target, views=views)
    return (x * mask).sum(dim=d)


def same_source(x: Tensor, *, axes: AxesIn = (), sources: Tensor, diagonal: bool = True) -> Tensor:
    """[N, N]: 1 where rows i and j come from the same sample (``sources``: each row's sample)."""
    same = (sources[:, None] == sources[None, :]).to(x.dtype)
    if not diagonal:
        same = same * (1 - torch.eye(len(sources), dtype=x.dtype, device=x.device))
    return same


def view_index(x: Tensor, *, axes: AxesIn = (), views: Tensor) -> Tensor:
    """[N]: which view of its sample each row is."""
    return views.to(x.dtype)


def size(
    x: Tensor | None = None, *, axes: AxesIn = (), over: object, part: int | None = None
) -> int:
    if x is None:
        raise ValueError("`size` without an input is the batch size or the class count")
    d = dims(axes[0] if axes else None, x, over)
    if part is not None:
        d = d[int(part) : int(part) + 1]
    out = 1
    for i in d:
        out *= x.shape[i]
    return out


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, *, axes: AxesIn = (), scale: float = 1.0) -> Tensor:
    out: Tensor = _GradReverse.apply(x, float(scale))
    return out


def stopgrad(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    return x.detach()


def tokens(x: Tensor, *, axes: AxesIn = ()) -> Tensor:
    """``[B, L, D]`` stays; a feature map ``[B, C, H, W]`` becomes ``[B, HW, C]``."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    return x


def heads(x: Tensor, *, axes: AxesIn = (), n: int = 12) -> Tensor:
    """``[B, L, D]`` -> ``[B, n, L, D / n]``."""
    b, length, d = x.shape
    if d % n:
        raise ValueError(f"{d} channels do not split into {n} heads")
    return x.reshape(b, length, n, d // n).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Learned tensors
# --------------------------------------------------------------------------------------------


class Learned(nn.Module):
    """A learned tensor: a number, one value per ``over`` position of x, or per sample id."""

    def __init__(self, shape: Sequence[int], init: float, per_sample: bool):
        super().__init__()
        self.value = nn.Parameter(torch.full(tuple(shape), float(init)))
        self.per_sample = per_sample

    def forward(self, index: Tensor | None) -> Tensor:
        if self.per_sample:
            if index is None:
                raise ValueError("a per-sample learned tensor needs the samples' indices")
            return self.value[index]
        return self.value


def learned(
    x: Tensor | None = None,
    *,
    axes: AxesIn = (),
    over: object = None,
    init: float = 0.0,
    num_samples: int | None = None,
) -> Learned:
    """Build the module of ``learned(...)`` from an example input."""
    names = over_axes(over) if over is not None else ()
    if x is None:
        if names == ("batch",):
            if num_samples is None:
                raise ValueError("`learned(over=batch)` needs the size of the training set")
            return Learned((num_samples,), init, per_sample=True)
        return Learned((), init, per_sample=False)
    ax = axes[0] if axes else None
    if ax is None:
        raise ValueError("`learned(x, over=...)` needs the axes of x")
    shape: list[int] = []
    for a, n in zip(ax, spans(ax, x.dim()), strict=True):
        if a in names:
            start = builtins.sum(spans(ax, x.dim())[: ax.index(a)])
            shape.extend(x.shape[start : start + n])
    return Learned(shape, init, per_sample=False)


class Head(nn.Module):
    """A linear head on x's pooled per-sample features, zero weights, bias ``init``."""

    def __init__(self, features: int, dim: int, init: float):
        super().__init__()
        self.linear = nn.Linear(features, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, float(init))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2).mean(-1) if x.dim() > 2 else x
        out: Tensor = self.linear(flat)
        return out.squeeze(-1) if self.dim == 1 else out


def head(x: Tensor, *, axes: AxesIn = (), dim: int = 1, init: float = 0.0) -> Head:
    """Build the module of ``head(x, ...)`` from an example input."""
    features = x.shape[1]
    return Head(int(features), int(dim), init).to(dtype=x.dtype, device=x.device)


# Every vocabulary entry implemented here, by its declared `impl` (one source of truth).
PRIMITIVES = {
    name: globals()[fn.impl.partition(":")[2]]
    for name, fn in FUNCTIONS.items()
    if fn.impl.startswith(__name__ + ":")
}
