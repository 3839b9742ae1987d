"""Axes of tensor values and the axis rule of every function: pure functions over name tuples.

Every value of the language has a static type made of its knowledge kind and its axes, an
ordered tuple of axis names. Tensors at run time lay their dimensions out in that order; the
one axis that may cover several (or no) dimensions is ``space`` (``H, W`` of a feature map, or
nothing once pooled). The checker (torch-free) and the compiler both compute axes with
:func:`infer`, so a wrong axis is found before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

Axes = tuple[str, ...]

BASE_AXES: Axes = ("batch", "channel", "space", "token", "class", "head")
# A relation matrix has two axes of the same nature: its rows are `x`, its columns `x2`; a
# relation along a column axis `x2` (RKD's angles: `differences` then `relation`) has columns `x3`.
AXES: Axes = BASE_AXES + tuple(f"{a}2" for a in BASE_AXES) + tuple(f"{a}3" for a in BASE_AXES)

# Where a tap's value comes from decides its axes (transformer features of image models:
# `tokens(x)`).
TAP_AXES: dict[str, Axes] = {
    "logits": ("batch", "class"),
    "embedding": ("batch", "channel"),
}
FEATURE_AXES: Axes = ("batch", "channel", "space")
# Taps of models run on token data (a batch of `input_ids`) carry a token axis: [B, L, V]
# logits, [B, L, D] hidden states. A value with `token` and no `space` lays the token axis out
# on one dimension or none (a sequence classifier's [B, K] logits), decided by its rank.
TOKEN_TAP_AXES: dict[str, Axes] = {
    "logits": ("batch", "token", "class"),
    "embedding": ("batch", "token", "channel"),
}
TOKEN_FEATURE_AXES: Axes = ("batch", "token", "channel")
# The masks a reduction over tokens may name (`mask=`); `none` reduces over every position.
MASKS: tuple[str, ...] = ("attention", "labels", "response", "none")

# Whether the data are tokens: False (images, vectors), True (token data). The checker types a
# method under both (it cannot know the data) and reports what is wrong under both; the
# compiler types it under what the example batch is.
_TOKEN_DATA: ContextVar[bool] = ContextVar("token_data", default=False)


@contextmanager
def token_data(value: bool) -> Iterator[None]:
    """Type taps as read from token data (or not) inside the block."""
    reset = _TOKEN_DATA.set(value)
    try:
        yield
    finally:
        _TOKEN_DATA.reset(reset)


def tap_axes_for(point: str) -> Axes:
    """The axes of a tap point (``logits``, ``embedding``, other: features) on this data."""
    if _TOKEN_DATA.get():
        return TOKEN_TAP_AXES.get(point, TOKEN_FEATURE_AXES)
    return TAP_AXES.get(point, FEATURE_AXES)


class AxisError(ValueError):
    """A function applied along an axis its input does not have (KD313), or mismatched axes.

    Attributes:
        param: the argument at fault (``"over"``, or ``""`` for the call as a whole).
        code: ``KD313`` (wrong axis) or ``KD314`` (axes of two inputs do not fit).
    """

    def __init__(self, message: str, param: str = "", code: str = "KD313", word: bool = False):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.word = word  # a bare word that is no axis (reported where it is written)


def axes_text(axes: Axes) -> str:
    """``(batch, class)``; ``()`` for a number."""
    return "(" + ", ".join(axes) + ")"


# Words for a set of axes, read against the value's own axes: `sample` is every axis but the
# batch (per sample, whatever the value is), `all` every axis, `batches` the axes that count
# samples (batch, and batch2 of a relation between samples).
AXIS_SETS: Axes = ("sample", "all", "batches")
_SET_MEMBERS: dict[str, Callable[[str], bool]] = {
    "sample": lambda a: a != "batch",
    "all": lambda a: True,
    "batches": lambda a: a in ("batch", "batch2"),
}


def over_axes(value: object, *, param: str = "over", of: Axes | None = None) -> Axes:
    """The axes named by an ``over=`` value: one bare word or a list of them.

    ``of``: the axes of the value it applies to, which `sample` and `all` stand for.
    """
    names = list(value) if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for n in names:
        if n in AXIS_SETS:
            if of is None:
                raise AxisError(f"`over={n}` needs a value whose axes are known", param)
            out.extend(a for a in of if _SET_MEMBERS[n](a) and a not in out)
            continue
        if not isinstance(n, str) or n not in AXES:
            raise AxisError(
                f"`{n}` is not an axis (axes: {', '.join(BASE_AXES)}, and `batch2`, ... for "
                "the columns of a relation)",
                param,
                word=True,
            )
        out.append(n)
    return tuple(out)


def broadcast(a: Axes, b: Axes) -> Axes:
    """The axes of an element-wise result: one side's axes must contain the other's, in order.

    A number (no axes) fits everything. ``(batch)`` against ``(batch, class)`` is a per-sample
    value applied to every class; ``(batch, channel)`` against ``(batch, class)`` is an error:
    nothing says how channels line up with classes.
    """
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    it = iter(big)
    if all(ax in it for ax in small):
        return big
    raise AxisError(
        f"axes {axes_text(a)} and {axes_text(b)} do not fit: one side's axes must contain "
        "the other's",
        "",
        "KD314",
    )


def _need(axes: Axes, wanted: Axes, func: str, param: str = "over") -> None:
    for ax in wanted:
        if ax not in axes:
            raise AxisError(
                f"`{func}` over `{ax}`, but the input's axes are {axes_text(axes)}", param
            )


def _over(axes: Axes, kwargs: dict[str, object], func: str, *, default_last: bool) -> Axes:
    value = kwargs.get("over")
    if value is None:
        if default_last:
            return axes[-1:]
        raise AxisError(f"`{func}` needs `over=` (the axis it works along)", "over")
    over = over_axes(value, of=axes)
    _need(axes, over, func)
    return over


Rule = Callable[[str, list[Axes], dict[str, object]], Axes]


def _same(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    return ins[0]


def _elementwise(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    out: Axes = ()
    for a in ins:
        out = broadcast(out, a)
    return out


def _along(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """Works along `over` (default the last axis) and keeps the shape: softmax, normalize."""
    if kw.get("over") is not None:
        _over(ins[0], kw, func, default_last=True)
    return ins[0]


def _along_required(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    _over(ins[0], kw, func, default_last=False)
    return ins[0]


def _reduce(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    over = _over(ins[0], kw, func, default_last=False)
    return tuple(a for a in ins[0] if a not in over)


def _relation(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    x = ins[0]
    if len(ins) > 1 and ins[1] != x:
        raise AxisError(
            f"`relation` of two values needs equal axes, got {axes_text(x)} and "
            f"{axes_text(ins[1])}",
            "",
            "KD314",
        )
    (over,) = _over(x, kw, func, default_last=False)[:1] or ("",)
    if over.endswith("3"):
        raise AxisError(f"`relation` rows cannot be `{over}`", "over")
    keep = tuple(a for a in x if a in ("batch", "head") and a != over)
    return (*keep, over, _columns(over))


def _columns(over: str) -> str:
    """The column axis of rows along `over`: `batch` -> `batch2`, `batch2` -> `batch3`."""
    return f"{over[:-1]}3" if over.endswith("2") else f"{over}2"


def _differences(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """``x_j - x_i`` for every pair of rows along `over`: ``(*keep, over, over2, *rest)``."""
    x = ins[0]
    (over,) = _over(x, kw, func, default_last=False)[:1] or ("",)
    if over == "space" or over[-1:] in ("2", "3"):
        raise AxisError(
            f"`differences` pairs the rows of one axis (batch, token, ...), not `{over}`", "over"
        )
    keep = tuple(a for a in x if a in ("batch", "head") and a != over)
    rest = tuple(a for a in x if a not in keep and a != over)
    return (*keep, over, f"{over}2", *rest)


def _shrink(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """x pooled over `space` to another value's size: both need a `space` axis; x's axes."""
    for a in ins:
        if "space" not in a:
            raise AxisError(
                f"`{func}` pools over `space`, but an input's axes are {axes_text(a)}", ""
            )
    return ins[0]


def _needs(axis: str) -> Rule:
    def rule(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
        if axis not in ins[0]:
            raise AxisError(
                f"`{func}` needs a `{axis}` axis, but the input's axes are {axes_text(ins[0])}",
                "",
            )
        return ins[0]

    return rule


def _batch_matrix(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    _needs("batch")(func, ins, kw)
    return ("batch", "batch2")


def _batch_only(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    _needs("batch")(func, ins, kw)
    return ("batch",)


def _drop_class(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    _needs("class")(func, ins, kw)
    return tuple(a for a in ins[0] if a != "class")


def _size(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    if ins:
        _over(ins[0], kw, func, default_last=False)
    return ()


def _tokens(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    if ins[0] not in (FEATURE_AXES, TOKEN_FEATURE_AXES):
        raise AxisError(
            f"`tokens` reads features (batch, channel, space), got {axes_text(ins[0])}", ""
        )
    return ("batch", "token", "channel")


def _heads(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    if ins[0] != ("batch", "token", "channel"):
        raise AxisError(
            f"`heads` splits token features (batch, token, channel), got {axes_text(ins[0])}",
            "",
        )
    return ("batch", "head", "token", "channel")


def _pool(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """Average pooling: the positions (space, or the tokens of token features) go."""
    if kw.get("size", 1) != 1:
        return ins[0]
    return tuple(a for a in ins[0] if a != "token")


def _group(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """`mean(x, over=head, groups=n)`: the axis stays, with n entries (means of its groups)."""
    over = _over(ins[0], kw, func, default_last=False)
    if len(over) != 1:
        raise AxisError("`groups=` averages groups along one axis", "over")
    return ins[0]


def _linear(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """A linear map of the last axis: per sample (batch, channel), or per token."""
    return ("batch", "token", "channel") if ins and "token" in ins[0] else ("batch", "channel")


def _fixed(axes: Axes) -> Rule:
    def rule(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
        return axes

    return rule


def _learned(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    over = over_axes(kw["over"]) if kw.get("over") is not None else ()
    if ins:
        _need(ins[0], over, func)
    elif any(a != "batch" for a in over):
        raise AxisError(
            f"`{func}` without an input is a number or one value per training sample "
            "(`over=batch`); give an input to size other axes: `learned(x, over=channel)`",
            "over",
        )
    return over


def _head(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    if "batch" not in ins[0]:
        raise AxisError(f"`head` reads per-sample values, got {axes_text(ins[0])}", "")
    dim = kw.get("dim", 1)
    return ("batch",) if dim == 1 else ("batch", "channel")


def _matrix(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """A relation matrix: the last two axes are an axis and its columns, ``(.., batch, batch2)``."""
    x = ins[0]
    if len(x) < 2 or x[-1] != f"{x[-2]}2" or x[-2] == "space":
        raise AxisError(
            f"`{func}` needs a relation matrix, its last axes a row axis and its column axis "
            f"such as (batch, batch2), got {axes_text(x)}",
            "",
        )
    return x if func == "eye" else x[:-1]


def _joined(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """``stack`` adds the `over` axis last; ``concat`` joins along an axis every input has."""
    if not ins:
        return ()  # no input: KD204, reported where the call is written
    for a in ins[1:]:
        if a != ins[0]:
            raise AxisError(
                f"`{func}` needs inputs of equal axes, got {axes_text(ins[0])} and {axes_text(a)}",
                "",
                "KD314",
            )
    (over,) = over_axes(kw.get("over"))[:1] or ("",)
    if func == "stack":
        if over in ins[0]:
            raise AxisError(
                f"`stack` adds the axis `{over}`, which the inputs already have "
                f"{axes_text(ins[0])}: `concat` joins along it",
                "over",
            )
        return (*ins[0], over)
    _need(ins[0], (over,), func)
    if over == "space":
        raise AxisError("`concat` joins along one dimension; `space` may cover several", "over")
    return ins[0]


def _random(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """x's axes (size 1 along those not in `over`): random numbers broadcast like x."""
    if kw.get("over") is not None:
        _over(ins[0], kw, func, default_last=False)
    return ins[0]


def _merge(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """Adjacent axes joined into one `channel` axis (`over=sample`: a vector per sample)."""
    x = ins[0]
    over = _over(x, kw, func, default_last=False)
    if "batch" in over:
        raise AxisError("`merge` keeps the batch axis: merge the others", "over")
    if not over:  # `over=sample` of one value per sample: a vector of one
        return (*x, "channel")
    at = [i for i, a in enumerate(x) if a in over]
    if at != list(range(at[0], at[-1] + 1)):
        raise AxisError(
            f"`merge` joins adjacent axes; ({', '.join(over)}) are not adjacent in {axes_text(x)}",
            "over",
        )
    out = (*x[: at[0]], "channel", *x[at[-1] + 1 :])
    if out.count("channel") > 1:
        raise AxisError(
            f"`merge` names the joined axis `channel`, and {axes_text(x)} keeps another", "over"
        )
    return out


def _select(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """One position along an axis: the axis goes away."""
    (over,) = _over(ins[0], kw, func, default_last=False)[:1] or ("",)
    if over == "space":
        raise AxisError("`select` takes a position of one axis; `space` may cover several", "over")
    return tuple(a for a in ins[0] if a != over)


def _rows(func: str, ins: list[Axes], kw: dict[str, object]) -> Axes:
    """Every row a sample: all axes but the last become the batch (per-token losses)."""
    return ("batch", ins[0][-1]) if ins[0] else ins[0]


# Rules that give axes without reading an input (the others read ``ins[0]``).
_NO_INPUT_RULES = frozenset(
    {"elementwise", "size", "learned", "vector", "class_vector", "spatial", "sample_matrix",
     "token_matrix", "token_rows", "channel_matrix"}
)  # fmt: skip

RULES: dict[str, Rule] = {
    "rows": _rows,
    "matrix": _matrix,
    "select": _select,
    "merge": _merge,
    "random": _random,
    "joined": _joined,
    "same": _same,
    "elementwise": _elementwise,
    "along": _along,
    "along_required": _along_required,
    "reduce": _reduce,
    "relation": _relation,
    "differences": _differences,
    "shrink": _shrink,
    "needs_class": _needs("class"),
    "drop_class": _drop_class,
    "batch_matrix": _batch_matrix,
    "batch_only": _batch_only,
    "size": _size,
    "tokens": _tokens,
    "pool": _pool,
    "linear": _linear,
    "group": _group,
    "heads": _heads,
    "learned": _learned,
    "head": _head,
    "vector": _fixed(("batch", "channel")),
    "class_vector": _fixed(("batch", "class")),
    "spatial": _fixed(("batch", "space")),
    "sample_matrix": _fixed(("batch", "batch2")),
    "token_matrix": _fixed(("batch", "head", "token", "token2")),
    "token_rows": _fixed(("batch", "token2")),
    "channel_matrix": _fixed(("batch", "channel", "channel2")),
}


def infer(
    func: str, rule: str | None, ins: Sequence[Axes | None], kw: dict[str, object]
) -> Axes | None:
    """Axes of ``func(*ins, **kw)`` by its rule; None where a rule or an input is unknown.

    Raises:
        AxisError: the call is wrong about axes (the message says how).
    """
    if rule is None or rule not in RULES:
        return None
    if any(a is None for a in ins):
        return None
    if positional(kw.get("over")):
        if not ins:  # `learned(2)`: dimensions of no value
            raise AxisError(f"`{func}` without an input takes axis names, not dimensions", "over")
        named = positions(ins[0], kw["over"], func)  # type: ignore[arg-type]
        if named is None:
            return None
        kw = {**kw, "over": list(named)}
    if not ins and rule not in _NO_INPUT_RULES:
        return None  # a missing input is reported by the arity check (KD204), not here
    return RULES[rule](func, [a for a in ins if a is not None], kw)


def positions(axes: Axes, over: object, func: str) -> Axes | None:
    """The axes at torch dimensions ``over`` of a value, or None where ``space`` makes the
    layout depend on the tensor (it may cover several dimensions, or none)."""
    if "space" in axes:
        return None
    items: list[Any] = list(over) if isinstance(over, list | tuple) else [over]
    out: list[str] = []
    for i in items:
        d = int(i)
        if not -len(axes) <= d < len(axes):
            raise AxisError(
                f"`{func}` over dimension {d}, but its input has {len(axes)} dimensions "
                f"{axes_text(axes)}",
                "over",
            )
        out.append(axes[d])
    return tuple(out)


def positional(over: object) -> bool:
    """``over=`` given as torch dimensions (``1``, ``[1, 2]``, ``-1``: the `dim=` of a legacy
    loss) rather than axis names: the dimensions of the tensor as it is, whatever its axes."""
    items = over if isinstance(over, list | tuple) else [over]
    return bool(items) and all(
        isinstance(i, int | float) and not isinstance(i, bool) and float(i).is_integer()
        for i in items
    )
