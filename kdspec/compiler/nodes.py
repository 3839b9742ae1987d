"""Runtime nodes: a term's sides compiled into small modules over lists of tensors.

A side evaluates to a list of tensors (one per paired layer; a single tap is a list of one,
broadcast against longer lists). Adapters are built lazily on the dry run, once the shapes on
the other side of the transfer are known, so specs never state channel counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdspec.ir import models as ir
from kdspec.ir.evaluate import Progress, at_progress
from kdspec.ops import LOSSES, TRANSFORMS, build_adapter
from kdspec.ops import components as comp
from kdspec.ops.adapters import AdapterShapeError
from kdspec.vocabulary import FUNCTIONS

# Losses whose two sides may differ in shape: VID's Gaussian, NST's MMD between channel sets.
_ANY_SHAPES = frozenset({"gaussian_nll", "mmd"})


@dataclass
class Env:
    """What a forward pass evaluates against: tap readers, labels, sample indices, caches."""

    read: Callable[[ir.Tap, list[int] | None], list[torch.Tensor]]
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    num_classes: int | None = None
    num_samples: int | None = None  # training set size (memory banks of learned losses)
    cache: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    shape_hint: list[tuple[int, ...]] | None = None  # the other side's shapes (adapters)
    hole: list[torch.Tensor] | None = None  # the value a pipeline step applies to
    batch_size: int | None = None  # `B`
    args: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # a def loss's sides
    progress: Progress | None = None  # where training is: values with schedules depend on it
    # Token data: the batch's [B, L] masks by name (attention, labels, response).
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    token_labels: torch.Tensor | None = None  # [B, L] labels aligned with the outputs
    # Data-parallel training: a per-sample tensor's rows over every process's shard of the
    # global batch, in rank order (memory banks updated by every sample); None in one process.
    gather_batch: Callable[[torch.Tensor], torch.Tensor] | None = None

    def mask(self, name: object = None, *, rows: bool = False) -> torch.Tensor | None:
        """The ``[B, L]`` mask called ``name``; None off token data or for ``none``.

        Without a name: the labels mask for the rows of per-token losses (``rows``, built-in
        losses on token values) when the batch has per-token labels, else the attention mask.
        """
        if name == "none" or not self.masks:
            return None
        if name is not None:
            key = str(name)
        else:
            key = "labels" if rows and "labels" in self.masks else "attention"
        if key not in self.masks:
            raise MaskError(str(key))
        return self.masks[key]

    def rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each of ``n`` rows' source sample and view index. A view with ``k`` views per
        sample lays them out view-major (view 0 of every sample, then view 1, ...), so a
        value of ``k * B`` rows has row ``r`` from sample ``r % B``, view ``r // B``."""
        r = torch.arange(n)
        if self.labels is not None:
            r = r.to(self.labels.device)
            if n == len(self.labels):  # one row per sample (a subset's rows, too)
                return r, torch.zeros_like(r)
        b = self.batch_size or n
        if n % b:
            raise ValueError(f"a value of {n} rows is not k views of the {b} samples of the batch")
        return r % b, r // b

    def labels_for(self, n: int) -> torch.Tensor | None:
        """The labels of ``n`` rows: each view has the label of its sample; the rows of
        per-position labels (``[B, L]`` tokens, ``rows`` of their ``[B, L, V]`` logits) theirs."""
        if self.labels is None or n == len(self.labels):
            return self.labels
        if self.labels.dim() > 1 and n == self.labels.numel():
            return self.labels.reshape(-1)
        return self.labels[self.rows(n)[0]]


class MaskError(ValueError):
    """A spec names a mask the batch does not have (``response`` without a response mask)."""

    def __init__(self, name: str):
        what = {"response": "`response_mask`", "labels": "per-token `labels`"}.get(name, name)
        super().__init__(f"`mask={name}`, but the batch has no {what}")
        self.name = name


def _tensor(v: Any) -> Any:
    """A number computed in a spec (`2`, `B`) as a tensor, for functions written for tensors."""
    if isinstance(v, int | float):
        return torch.as_tensor(float(v), dtype=torch.get_default_dtype())
    return v


def broadcast(*lists: list[Any]) -> list[tuple[Any, ...]]:
    """Zip lists, repeating lists of length one; lengths must otherwise agree."""
    n = max(len(x) for x in lists)
    for x in lists:
        if len(x) not in (1, n):
            raise ValueError(f"cannot pair lists of lengths {[len(y) for y in lists]}")
    return [tuple(x[0] if len(x) == 1 else x[i] for x in lists) for i in range(n)]


class Node(nn.Module):
    """A node of a compiled side; ``forward(env)`` returns a list of tensors."""

    def forward(self, env: Env) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class TapNode(Node):
    """Reads a tap (``indices`` pick and order the layers of a range, as the mapping says)."""

    def __init__(self, tap: ir.Tap, indices: list[int] | None = None):
        super().__init__()
        self.tap = tap
        self.indices = indices

    def forward(self, env: Env) -> list[torch.Tensor]:
        return env.read(self.tap, self.indices)


class VirtualNode(Node):
    """A virtual teacher's logits: ``correct`` on the true class, the rest spread evenly."""

    def __init__(self, correct: object):
        super().__init__()
        self.correct = correct

    def forward(self, env: Env) -> list[torch.Tensor]:
        if env.labels is None or env.num_classes is None:
            raise ValueError("a virtual teacher needs the batch's labels")
        correct = float(at_progress(self.correct, env.progress))
        return [TRANSFORMS["virtual_teacher"](env.labels, env.num_classes, correct=correct)]


class TransformNode(Node):
    """A knowledge transform applied element-wise (two inputs for ``fsp``)."""

    def __init__(
        self,
        func: str,
        inputs: list[Node],
        kwargs: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.func = func
        self.inputs = nn.ModuleList(inputs)
        self.kwargs = kwargs
        self.extra = extra or {}  # per-element tensors (OFD margins), keyed "margins"
        self.in_axes: Any = None  # the input's static axes (token values: masked rows, pools)

    def forward(self, env: Env) -> list[torch.Tensor]:
        values = [[_tensor(v) for v in node(env)] for node in self.inputs]
        if self.func == "stopgrad":
            return [v.detach() for v in values[0]]
        if self.func == "resize":
            # The size found on the dry run is kept: a prediction (evaluation, no other side)
            # resizes as training did.
            hint = env.shape_hint if _spatial(env.shape_hint) else self.extra.get("hint")
            if _spatial(hint) and "hint" not in self.extra:
                self.extra["hint"] = hint
            return [_resize(v, hint, i) for i, v in enumerate(values[0])]
        fn = TRANSFORMS.get(self.func) or comp.TRANSFORMS[self.func]
        kwargs = at_progress(self.kwargs, env.progress)
        masked = self.func in ("rows", "pool")
        if masked:
            kwargs = dict(kwargs)
            name = kwargs.pop("mask", None)
        out = []
        for i, args in enumerate(broadcast(*values)):
            if masked:
                dim = _token_dim(args[0], self.in_axes)
                if self.func == "pool" and dim != 1:  # pool reads [B, L, D] token features
                    dim = None
                m = env.mask(name, rows=self.func == "rows") if dim is not None else None
                extra = {"token_dim": dim} if self.func == "rows" and m is not None else {}
                out.append(fn(*args, **kwargs, mask=m, **extra))
            elif self.func == "margin_relu":
                margins = self.extra["margins"]
                margin = margins[i if len(margins) > 1 else 0].to(args[0])
                out.append(fn(args[0], margin))
            else:
                out.append(fn(*args, **kwargs))
        return out


def _spatial(hint: list[tuple[int, ...]] | None) -> bool:
    return hint is not None and all(len(shape) == 3 for shape in hint)


def _token_dim(x: Any, axes: Any) -> int | None:
    """The dimension of the tokens of ``x`` [B, (H,) L, ...] by its static axes (unknown axes:
    a [B, L, D] tensor's 1), None when it has none (batch and heads only may come first)."""
    if not isinstance(x, torch.Tensor):
        return None
    if axes is None:
        return 1 if x.dim() == 3 else None
    ax = tuple(axes[0] if axes and isinstance(axes[0], tuple) else axes)
    if "token" not in ax or x.dim() != len(ax) or ax[0] != "batch":
        return None
    i = ax.index("token")
    return i if all(a in ("batch", "head") for a in ax[:i]) else None


def _resize(x: torch.Tensor, hint: list[tuple[int, ...]] | None, i: int) -> torch.Tensor:
    """Pool (or interpolate) a feature map to the other side's spatial size."""
    if hint is None or x.dim() != 4:
        return x
    shape = hint[i if len(hint) > 1 else 0]
    if len(shape) != 3 or tuple(x.shape[-2:]) == tuple(shape[-2:]):
        return x
    size = (int(shape[-2]), int(shape[-1]))
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return nn.functional.adaptive_avg_pool2d(x, size)
    return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class HoleNode(Node):
    """Stands for the value a pipeline step is applied to."""

    def forward(self, env: Env) -> list[torch.Tensor]:
        assert env.hole is not None
        return env.hole


class PipelineNode(Node):
    """A side: its expression (``raw``), then the transfer's knowledge pipeline steps."""

    def __init__(self, inner: Node, steps: list[Node]):
        super().__init__()
        self.inner = inner
        self.steps = nn.ModuleList(steps)

    def raw(self, env: Env) -> list[torch.Tensor]:
        return self.inner(env)

    def apply_steps(self, values: list[torch.Tensor], env: Env) -> list[torch.Tensor]:
        for step in self.steps:
            env.hole = values
            values = step(env)
        env.hole = None
        return values

    def forward(self, env: Env) -> list[torch.Tensor]:
        return self.apply_steps(self.raw(env), env)


class CombineNode(Node):
    """A (weighted) mean over several inputs; of distributions, the mean of probabilities."""

    def __init__(self, inputs: list[Node], weights: object, distribution: bool):
        super().__init__()
        self.inputs = nn.ModuleList(inputs)
        self.weights = weights
        self.distribution = distribution

    def forward(self, env: Env) -> list[torch.Tensor]:
        values = [node(env) for node in self.inputs]
        fn = TRANSFORMS["mean_dist" if self.distribution else "mean"]
        weights = at_progress(self.weights, env.progress)
        if weights is not None and not sum(weights) > 0:
            raise ValueError(f"the weights {weights} sum to zero at this point of training")
        return [fn(*args, weights=weights) for args in broadcast(*values)]


class AdapterNode(Node):
    """A learned adapter per element, sized on the dry run from the other side's shapes.

    A list component (:data:`kdspec.ops.components.COMPONENTS`) is one module over the whole
    list instead, and may take further inputs (``extra``: ``gate(trunk, branches)``).
    """

    def __init__(
        self,
        func: str,
        child: Node,
        kwargs: dict[str, Any],
        term: str,
        extra: list[Node] | None = None,
    ):
        super().__init__()
        self.func = func
        self.child = child
        self.kwargs = kwargs
        self.term = term
        self.extra = nn.ModuleList(extra or [])
        self.adapters = nn.ModuleList()

    def _build(self, values: list[torch.Tensor], env: Env) -> None:
        hint = env.shape_hint
        for i, v in enumerate(values):
            kwargs = dict(self.kwargs)
            out_shape: tuple[int, ...] | None = None
            if self.func == "classifier_head":
                kwargs.setdefault("num_classes", env.num_classes)
            elif "dim" in kwargs and kwargs["dim"] is not None:
                pass
            elif hint is not None:
                out_shape = hint[i if len(hint) > 1 else 0]
            elif self.func not in ("identity", "embed"):
                raise AdapterShapeError(
                    f"cannot size `{self.func}`: the other side of `{self.term}` gives no shape "
                    "(adapters on both sides need an explicit `dim=`)"
                )
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
            module = build_adapter(self.func, tuple(v.shape[1:]), out_shape, **kwargs)
            self.adapters.append(module.to(device=v.device, dtype=v.dtype).train(self.training))

    def _component(self, values: list[torch.Tensor], env: Env) -> list[torch.Tensor]:
        hint = env.shape_hint
        lists = [values, *(node(env) for node in self.extra)]
        if len(self.adapters) == 0:
            ctx = comp.BuildContext(env.num_classes, env.num_samples)
            kwargs = {k: v for k, v in self.kwargs.items() if v is not None}
            module = comp.build_component(self.func, lists, hint, ctx, **kwargs)
            self.adapters.append(module.train(self.training))  # built on the (eval) dry run
        out: list[torch.Tensor] = self.adapters[0](*lists)
        return out

    def forward(self, env: Env) -> list[torch.Tensor]:
        values = self.child(env)
        if self.func in comp.COMPONENTS:
            return self._component(values, env)
        if len(self.adapters) == 0:
            self._build(values, env)
        if len(self.adapters) != len(values):
            raise ValueError(
                f"`{self.func}` was built for {len(self.adapters)} layers, got {len(values)}"
            )
        return [a(v) for a, v in zip(self.adapters, values, strict=True)]


class LetNode(Node):
    """A shared named expression: evaluated once per forward, adapters built once."""

    def __init__(self, inner: Node):
        super().__init__()
        self.inner = inner

    def forward(self, env: Env) -> list[torch.Tensor]:
        key = id(self)
        if key not in env.cache:
            env.cache[key] = self.inner(env)
        return env.cache[key]


class TermModule(nn.Module):
    """One loss term: evaluate both sides, pair them, apply the loss and sum over pairs."""

    def __init__(
        self,
        term: ir.Term,
        source: Node | None,
        target: Node,
        loss: str,
        loss_kwargs: dict[str, Any],
        to_probs: bool,
        subset: Callable[..., Any] | None,
        loss_node: Node | None = None,
        weight_node: Node | None = None,
    ):
        super().__init__()
        self.loss_node = loss_node  # a loss written as a `def`, over env.args
        self.weight_node = weight_node  # a weight computed from the batch
        self.term = term
        self.name = term.name
        self.source = source
        self.target = target
        self.loss = loss
        self.loss_kwargs = loss_kwargs
        self.to_probs = to_probs
        self.subset = subset
        self.learned = nn.ModuleList()  # a learned loss, built on the dry run
        # Token values (batch, token, ...): a built-in loss sees the kept tokens' rows.
        self.token_axes: tuple[str, ...] | None = None

    def _token_rows(self, value: Any, env: Env) -> torch.Tensor | None:
        """The ``[B, L]`` mask of the rows a built-in loss sees, when ``value`` has tokens."""
        if self.token_axes is None or not isinstance(value, torch.Tensor):
            return None
        if value.dim() != len(self.token_axes):  # no token dimension (a sequence classifier)
            return None
        return env.mask(rows=True)

    def _learned(self, src: list[torch.Tensor], tgt: list[torch.Tensor], env: Env) -> torch.Tensor:
        """A learned loss sees both whole sides, unpaired (built on first use)."""
        if len(self.learned) == 0:
            ctx = comp.BuildContext(env.num_classes, env.num_samples)
            module = comp.build_learned_loss(self.loss, src, tgt, ctx, **self.loss_kwargs)
            # Built on the dry run, which runs in eval mode: state (CRD's memory) stays put.
            self.learned.append(module.train(self.training))
        value: torch.Tensor = self.learned[0](src, tgt, env)
        return value

    def forward(self, env: Env) -> torch.Tensor:
        if self.loss_node is not None:
            return self._expression_loss(env)
        value = self._builtin_loss(env)
        if self.weight_node is not None:
            value = value * self.weight_node(env)[0]
        return value

    def _sides(self, env: Env) -> tuple[list[torch.Tensor] | None, list[torch.Tensor]]:
        if self.source is None:
            env.shape_hint = None
            return None, self.target(env)
        env.shape_hint = None
        if isinstance(self.source, PipelineNode):
            raw = self.source.raw(env)
            hint = [tuple(v.shape[1:]) for v in raw]
            src = self.source.apply_steps(raw, env)
        else:
            src = self.source(env)
            hint = [tuple(v.shape[1:]) for v in src]
        env.shape_hint = hint
        if isinstance(self.target, PipelineNode):
            tgt = self.target.apply_steps(self.target.raw(env), env)
        else:
            tgt = self.target(env)
        env.shape_hint = None
        return src, tgt

    def _expression_loss(self, env: Env) -> torch.Tensor:
        """A `def` loss: per paired layer, summed over the batch after the weight."""
        from kdspec.ir.functions import STUDENT_SIDE, TEACHER_SIDE

        assert self.loss_node is not None
        src, tgt = self._sides(env)
        mask = self.subset(env) if self.subset else None
        pairs = broadcast(src, tgt) if src is not None else [(None, t) for t in tgt]
        total: torch.Tensor | None = None
        labels = env.labels
        for s, t in pairs:
            if mask is not None:
                keep = self._subset_rows(mask, t, env, one_sided=s is None)
                if not bool(keep.any()):
                    continue
                s = s[keep] if s is not None else None
                t = t[keep]
                y = env.labels_for(len(keep))
                env.labels = y[keep] if y is not None else None
            rows = self._token_rows(t, env)  # a library loss on token values: kept tokens' rows
            if rows is not None:
                s, t = (s[rows] if s is not None else None), t[rows]
                if env.token_labels is not None and env.token_labels.shape == rows.shape:
                    env.labels = env.token_labels[rows]  # each row's own token label
            self._same_shapes(s, t)
            env.args = {STUDENT_SIDE: [t], **({TEACHER_SIDE: [s]} if s is not None else {})}
            value = self.loss_node(env)[0]
            if self.weight_node is not None:
                value = value * self.weight_node(env)[0]
            value = torch.as_tensor(value).sum()
            total = value if total is None else total + value
            env.labels = labels
        env.args = {}
        return total if total is not None else tgt[0].new_zeros(())

    def _subset_rows(
        self, mask: torch.Tensor, t: torch.Tensor, env: Env, one_sided: bool
    ) -> torch.Tensor:
        """The rows of ``t`` a subset (``on``) keeps: a one-sided term's k views of a sample
        are kept with their sample."""
        if len(mask) == len(t):
            return mask
        if not one_sided:
            raise ValueError(
                f"`{self.name}`: a subset (`on`) of a value with several views per sample "
                "is not supported in a loss written as a `def`"
            )
        return mask[env.rows(len(t))[0]]

    def _same_shapes(self, s: Any, t: Any) -> None:
        """A loss of the library (prelude or Python) compares sides of one shape."""
        if (
            isinstance(t, torch.Tensor)
            and isinstance(s, torch.Tensor)
            and self.loss not in _ANY_SHAPES
            and (fn := FUNCTIONS.get(self.loss)) is not None
            and fn.category == "loss"
            and s.shape != t.shape
        ):
            raise ShapeMismatch(tuple(s.shape[1:]), tuple(t.shape[1:]))

    def _builtin_loss(self, env: Env) -> torch.Tensor:
        fn = LOSSES.get(self.loss)
        loss_kwargs = at_progress(self.loss_kwargs, env.progress)
        if self.source is None:  # supervision by labels
            env.shape_hint = None
            outs = self.target(env)
            labels = env.labels
            if labels is None:
                raise ValueError(f"`{self.name}` needs labels")
            if fn is None:
                raise ValueError(f"`{self.loss}` compares two sides; it cannot supervise")
            mask = self.subset(env) if self.subset else None
            total = outs[0].new_zeros(())
            for v in outs:
                y = env.labels_for(len(v))  # every view of a sample has the sample's label
                assert y is not None
                if mask is not None:
                    keep = mask if len(mask) == len(v) else mask[env.rows(len(v))[0]]
                    if not bool(keep.any()):
                        continue
                    v, y = v[keep], y[keep]
                rows = self._token_rows(v, env)
                if rows is not None:  # per-token labels, aligned with the outputs
                    v, y = v[rows], env.token_labels[rows]  # type: ignore[index]
                total = total + fn(v, y, **loss_kwargs)
            return total
        # Adapters and `resize` on the student side size themselves from the teacher side's
        # raw value (before the knowledge pipeline), e.g. a regressor to the teacher's map.
        src, tgt = self._sides(env)
        assert src is not None
        if self.loss in comp.LEARNED_LOSSES:
            return self._learned(src, tgt, env)
        assert fn is not None
        mask = self.subset(env) if self.subset else None
        # An adapter may return a tuple (VID's mean and variance): start from a plain tensor.
        ref = next(v for v in (*tgt, *src) if isinstance(v, torch.Tensor))
        total = ref.new_zeros(())
        for s, t in broadcast(src, tgt):
            if self.to_probs:
                s, t = s.exp(), t.exp()
            if mask is not None:
                if not bool(mask.any()):
                    continue
                s, t = s[mask], t[mask]
            rows = self._token_rows(t, env)
            if rows is not None:
                s, t = s[rows], t[rows]
            self._same_shapes(s, t)
            total = total + fn(s, t, **loss_kwargs)
        return total


class ApplyShapeError(ValueError):
    """A module applied to a value (``t.classifier(x)``) takes another shape per sample."""

    def __init__(
        self,
        module: str,
        expected: tuple[int, ...],
        given: tuple[int, ...],
        where: tuple[object, ...] = (),
    ):
        super().__init__(
            f"`{module}` takes {list(expected)} per sample (its input in the role's forward), "
            f"and is given {list(given)}"
        )
        self.module = module
        self.where = where  # the IR path of the side or prediction it is in


class ApplyNode(Node):
    """A role's module applied to values as a function (``t.classifier(x)``).

    The module is the role's own (its current weights, its train/eval mode); the gradient
    reaches its weights only while the role is trained, and always flows into the inputs. An
    adapter in the inputs is sized to the module's input (``t.classifier(linear(x))``).
    """

    def __init__(
        self,
        owner: Any,
        role: str,
        path: str,
        inputs: list[Node],
        in_shape: Any,
        text: str,
        where: tuple[object, ...] = (),
    ):
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # the Distiller: not a submodule (no cycle)
        self.role = role
        self.path = path
        self.inputs = nn.ModuleList(inputs)
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.text = text
        self.where = where

    def forward(self, env: Env) -> list[torch.Tensor]:
        saved = env.shape_hint
        if self.in_shape is not None:
            env.shape_hint = [self.in_shape]
        try:
            values = [node(env) for node in self.inputs]
        finally:
            env.shape_hint = saved
        owner: Any = self.__dict__["_owner"]
        module = owner.roles[self.role].get_submodule(self.path)
        params = None
        if not owner.trains(self.role):  # weights fixed, gradient into the inputs only
            params = {n: p.detach() for n, p in module.named_parameters()}
        out = []
        for args in broadcast(*values):
            x = args[0]
            if self.in_shape is not None and tuple(x.shape[1:]) != self.in_shape:
                raise ApplyShapeError(self.text, self.in_shape, tuple(x.shape[1:]), self.where)
            if params is None:
                out.append(module(*args))
            else:
                out.append(torch.func.functional_call(module, params, args))
        return out


class ShapeMismatch(ValueError):
    """The two sides of a transfer have different shapes at the loss."""

    def __init__(self, source: tuple[int, ...], target: tuple[int, ...]):
        super().__init__(f"teacher side {list(source)} vs student side {list(target)}")
        self.source_shape = source
        self.target_shape = target


# ---------------------------------------------------------------------------------------------
# Expressions of typed primitives (issue 9): constants, arguments, operators, primitives
# ---------------------------------------------------------------------------------------------


class ConstNode(Node):
    """A number known before the batch: a constant, a parameter, or a schedule (per step)."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value

    def forward(self, env: Env) -> list[Any]:
        return [float(at_progress(self.value, env.progress))]


class ArgNode(Node):
    """A value bound by the term: a loss's teacher or student side (``env.args``)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, env: Env) -> list[torch.Tensor]:
        return env.args[self.name]


class PrimNode(Node):
    """A primitive (or an operator) applied per paired layer, its inputs lined up by axes.

    ``in_axes``/``in_dist``: each input's static axes and whether it is a distribution (kept
    as log-probabilities: read as probabilities, except by ``log``, which reads them exactly).
    """

    def __init__(
        self,
        func: str,
        inputs: list[Node],
        kwargs: dict[str, Any],
        in_axes: list[Any],
        in_dist: list[bool],
        keep_storage: bool = False,
    ):
        super().__init__()
        self.func = func
        self.inputs = nn.ModuleList(inputs)
        self.kwargs = kwargs
        self.in_axes = in_axes
        self.in_dist = in_dist
        self.keep_storage = keep_storage  # stopgrad & co. pass a distribution through as it is

    def _read(self, v: Any, dist: bool) -> Any:
        if isinstance(v, int | float) and self.func not in ("size", "+", "-", "*", "/", "^"):
            return torch.as_tensor(float(v), dtype=torch.get_default_dtype())  # `log(classes)`
        if not dist or self.keep_storage or not isinstance(v, torch.Tensor):
            return v
        return v if self.func == "log" else v.exp()

    def forward(self, env: Env) -> list[Any]:
        from kdspec.ops import primitives as P

        values = [node(env) for node in self.inputs]
        kwargs = at_progress(self.kwargs, env.progress)  # `grad_reverse(x, scale=ramp(...))`
        fn = FUNCTIONS.get(self.func)
        if fn is not None and "mask" in fn.params:
            kwargs = {**kwargs, "mask": env.mask(kwargs.get("mask"))}
        out: list[Any] = []
        for args in broadcast(*values) if values else [()]:
            xs = [self._read(v, d) for v, d in zip(args, self.in_dist, strict=False)]
            if self.func in P.BINARY:
                out.append(P.binary(self.func, xs[0], xs[1], self.in_axes))
            elif self.func == "neg":
                out.append(-xs[0])
            elif self.func == "log" and self.in_dist and self.in_dist[0]:
                out.append(xs[0])  # the stored log-probabilities, exactly
            elif self.func == "mean" and _keeps_distribution(self.in_axes, self.in_dist, kwargs):
                # A mean of distributions over other axes than theirs (heads, in groups)
                # averages probabilities and is a distribution: kept as log-probabilities.
                probs = xs[0].exp() if self.keep_storage else xs[0]
                p = P.mean(probs, axes=self.in_axes, **kwargs)
                out.append(p.log().clamp_min(torch.finfo(p.dtype).min))
            elif self.func in LOSSES:  # a built-in loss's value (a number) inside an expression
                if FUNCTIONS[self.func].inputs == 1:  # a one-input loss takes the labels
                    out.append(LOSSES[self.func](xs[0], env.labels_for(len(xs[0])), **kwargs))
                else:
                    out.append(LOSSES[self.func](*xs, **kwargs))
            elif self.func in ("label_mask", "at_label"):
                n = xs[0].shape[0]
                if env.labels is None and kwargs.get("target", "label") == "label":
                    raise ValueError(f"`{self.func}` needs the batch's labels")
                labels = env.labels_for(n)
                views = env.rows(n)[1] if kwargs.get("target") == "view" else None
                out.append(
                    P.PRIMITIVES[self.func](
                        *xs,
                        axes=self.in_axes,
                        labels=labels if labels is not None else env.rows(n)[1],
                        views=views,
                        **kwargs,
                    )
                )
            elif self.func in ("same_source", "view_index"):
                sources, views = env.rows(xs[0].shape[0])
                context = {"sources": sources} if self.func == "same_source" else {"views": views}
                out.append(P.PRIMITIVES[self.func](*xs, axes=self.in_axes, **context, **kwargs))
            elif self.func == "size" and not xs:
                over = kwargs.get("over")
                n = env.batch_size if over == "batch" else env.num_classes
                if n is None:
                    raise ValueError(f"the size of `{over}` is not known here")
                out.append(float(n))
            elif self.func == "size":
                out.append(float(P.size(*xs, axes=self.in_axes, **kwargs)))
            else:
                out.append(P.PRIMITIVES[self.func](*xs, axes=self.in_axes, **kwargs))
        return out


def _keeps_distribution(in_axes: Any, in_dist: list[bool], kwargs: dict[str, Any]) -> bool:
    """`mean(p, over=...)` of a distribution along axes other than its last (the one it is a
    distribution along): the mean of the probabilities is a distribution again."""
    from kdspec.vocabulary.axes import over_axes

    if not in_dist or not in_dist[0] or not in_axes or not in_axes[0]:
        return False
    over = kwargs.get("over")
    try:
        return over is not None and in_axes[0][-1] not in over_axes(over, of=in_axes[0])
    except ValueError:  # torch dimensions (`over=1`)
        return False


class LearnedNode(Node):
    """A learned tensor (``learned``) or head (``head``), built on the dry run, then trained."""

    def __init__(self, func: str, inputs: list[Node], kwargs: dict[str, Any], in_axes: list[Any]):
        super().__init__()
        self.func = func
        self.inputs = nn.ModuleList(inputs)
        self.kwargs = kwargs
        self.in_axes = in_axes
        self.adapters = nn.ModuleList()

    def forward(self, env: Env) -> list[Any]:
        from kdspec.ops import primitives as P

        values = [node(env) for node in self.inputs]
        if len(self.adapters) == 0:
            example = values[0][0] if values else None
            built: nn.Module
            if self.func == "head":
                assert example is not None  # `head` takes an input (KD204 otherwise)
                built = P.head(example, axes=self.in_axes, **at_progress(self.kwargs, None))
            else:
                built = P.learned(
                    example,
                    axes=self.in_axes,
                    num_samples=env.num_samples,
                    **at_progress(self.kwargs, None),
                )
                if example is not None:
                    built = built.to(device=example.device, dtype=example.dtype)
            self.adapters.append(built.train(self.training))
        module = self.adapters[0]
        if self.func == "head":
            return [module(v) for v in values[0]]
        return [module(env.index)]
