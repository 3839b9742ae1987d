"""Binding: a checked method's roles to real models, and what the compiler learns from them.

The first step of compiling (bind -> build -> plan -> run): every role gets its model (``ema``
and ``snapshot`` roles a frozen copy of their source), every model runs the example batch once
so its modules, calls and shapes are known (:func:`~kdspec.compiler.taps.discover`), hand-offs
are checked for matching weights and views become functions of the batch. Problems are collected
as diagnostics at the spec lines they concern, never raised one at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdspec.compiler.sequence import MASK_KEYS, NOT_INPUTS, is_causal, is_token_inputs
from kdspec.compiler.taps import ModelTaps, discover
from kdspec.compiler.views import BatchRewrite, make_view
from kdspec.diagnostics import Diagnostic
from kdspec.ir import SourceMap
from kdspec.ir import models as ir
from kdspec.ir.traverse import find_all

__all__ = ["Batch", "Binding", "Reporter", "bind", "unpack"]


@dataclass
class Batch:
    """A batch taken apart: inputs, labels, sample indices, or (functional mode) tapped tensors."""

    x: Any
    labels: torch.Tensor | None
    index: torch.Tensor | None
    taps: dict[str, Any] | None = None
    response: torch.Tensor | None = None  # token data: the response mask
    attention: torch.Tensor | None = None  # a functional batch's attention mask
    replay: torch.Tensor | None = None  # which stored augmentation each sample drew (cache)

    @property
    def tokens(self) -> bool:
        """Whether this is token data (see :mod:`kdspec.compiler.sequence`)."""
        return is_token_inputs(self.x) or self.attention is not None

    def to(self, device: str | torch.device) -> Batch:
        """The inputs, labels, indices and response mask on ``device`` (tapped tensors stay
        where they are)."""
        return Batch(
            _to(self.x, device),
            _to(self.labels, device),
            _to(self.index, device),
            response=_to(self.response, device),
            replay=self.replay,
        )

    def size(self) -> int | None:
        """The number of examples, from the first tensor with a batch dimension."""
        x = self.x
        if isinstance(x, dict):  # model inputs by name (token data: input_ids first)
            x = x.get("input_ids", next(iter(x.values()), None))
        for v in (self.labels, x, *((self.taps or {}).values())):
            if isinstance(v, list | tuple) and v:
                v = v[0]
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
        return None


def unpack(batch: Any) -> Batch:
    """``(x, y[, index])``, ``{"x": ..., "y"/"labels": ..., "index": ...}``, a dict of tapped
    tensors (functional mode) or a bare input."""
    if isinstance(batch, dict):
        response = batch.get("response_mask")
        if "x" in batch:
            labels = batch.get("y", batch.get("labels"))
            replay = batch.get("replay")
            return Batch(batch["x"], labels, batch.get("index"), response=response, replay=replay)
        if "input_ids" in batch:  # a token batch: every other key is a model input
            x = {k: v for k, v in batch.items() if k not in NOT_INPUTS}
            return Batch(x, batch.get("labels"), batch.get("index"), response=response)
        skip = ("labels", "index", "replay", *MASK_KEYS)
        taps = {k: v for k, v in batch.items() if k not in skip}
        return Batch(
            None,
            batch.get("labels"),
            batch.get("index"),
            taps,
            response=response,
            attention=batch.get("attention_mask"),
        )
    if isinstance(batch, list | tuple):
        x = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        index = batch[2] if len(batch) > 2 else None
        replay = batch[3] if len(batch) > 3 else None
        return Batch(x, labels, index, replay=replay)
    return Batch(batch, None, None)


def _to(x: Any, device: str | torch.device) -> Any:
    if isinstance(x, dict):  # token data: the models' keyword inputs
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, torch.Tensor) else x


class Reporter:
    """Collects compile diagnostics at spec paths (``("term", name, "target")``...)."""

    def __init__(self, smap: SourceMap | None) -> None:
        self.smap = smap or SourceMap(None)  # type: ignore[arg-type]
        self.diags: list[Diagnostic] = []

    def __call__(
        self,
        code: str,
        message: str,
        path: tuple[object, ...],
        label: str = "",
        help: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        diag = self.smap.diagnostic(code, message, path, label, help=help, notes=notes)
        self.diags.append(diag)


@dataclass
class Binding:
    """The models bound to a method's roles, and what running the example batch told us.

    ``functional`` (no models) compiles the terms alone: ``given`` holds the example's tapped
    tensors by tap text instead of models and their :class:`ModelTaps`.
    """

    roles: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    taps: dict[str, ModelTaps] = field(default_factory=dict)
    views: dict[str, Callable[..., Any]] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)
    functional: bool = False
    num_classes: int | None = None
    batch: Batch = field(default_factory=lambda: Batch(None, None, None))
    causal: bool = False  # some role is a causal LM: its logits at t predict labels at t + 1
    token_data: bool = False  # the batches are tokens (taps carry a token axis)
    rewrite: tuple[BatchRewrite, str] | None = None  # generated data, the role generating it


def bind(
    method: ir.Method,
    models: dict[str, nn.Module] | None,
    example_batch: Any,
    report: Reporter,
    *,
    num_classes: int | None = None,
    train_data: Any = None,
    device: str | torch.device | None = None,
) -> Binding:
    """Bind ``models`` to the roles of ``method`` (see the module docstring), reporting problems."""
    batch = unpack(example_batch)
    binding = Binding(functional=models is None, num_classes=num_classes, batch=batch)
    if models is None:
        binding.given = batch.taps or {}
    else:
        binding.roles = _bind_roles(method, models, report)
        if device is not None:
            binding.roles.to(device)
            binding.batch = batch.to(device)
        binding.taps = _discover(binding.roles, binding.batch.x, report)
        binding.causal = any(is_causal(model) for model in binding.roles.values())
        if binding.num_classes is None:
            binding.num_classes = next(
                (t.logits_shape[-1] for t in binding.taps.values() if t.logits_shape), None
            )
    _check_handoffs(method, binding.roles, report)
    binding.views = _views(method, train_data, report)
    for part in method.data:
        if isinstance(binding.views.get(part.name), BatchRewrite):
            _bind_rewrite(method, binding, report, part)
    binding.token_data = binding.batch.tokens
    return binding


def _bind_roles(method: ir.Method, models: dict[str, nn.Module], report: Reporter) -> nn.ModuleDict:
    roles = nn.ModuleDict()
    for role in method.roles:
        if role.mode == "virtual":
            continue
        if role.mode in ("ema", "snapshot"):
            src = models.get(role.source or "")
            if src is None:
                report(
                    "KD408",
                    f"`{role.name}` copies `{role.source}`, which has no model",
                    ("role", role.name),
                )
                continue
            copied = copy.deepcopy(src)
            for p in copied.parameters():
                p.requires_grad_(False)
            roles[role.name] = copied
            continue
        model = models.get(role.name)
        if model is None:
            report(
                "KD408",
                f"{role.kind} `{role.name}` has no model",
                ("role", role.name),
                "needs a model",
                help=f'bind it in the run file: `[models] {role.name} = "zoo:..."`',
            )
            continue
        roles[role.name] = model
    return roles


def _discover(roles: nn.ModuleDict, x: Any, report: Reporter) -> dict[str, ModelTaps]:
    taps: dict[str, ModelTaps] = {}
    for name, model in roles.items():
        try:
            taps[name] = discover(model, x)
        except Exception as exc:  # a model that cannot run the example is a user error
            report(
                "KD403", f"the model of `{name}` fails on the example batch: {exc}", ("role", name)
            )
    return taps


def _check_handoffs(method: ir.Method, roles: nn.ModuleDict, report: Reporter) -> None:
    for stage in method.stages:
        for k, (giver, taker) in enumerate(stage.handoffs):
            if giver not in roles or taker not in roles:
                continue
            a, c = roles[giver].state_dict(), roles[taker].state_dict()
            if a.keys() == c.keys() and all(a[n].shape == c[n].shape for n in a):
                continue
            report(
                "KD403",
                f"`handoff {giver} -> {taker}` needs the same architecture on "
                "both roles, but their weights differ in names or shapes",
                ("stage", stage.name, "handoff", k),
                "weights cannot be handed over",
                help=f"bind `{taker}` to the same model as `{giver}` in the run file",
            )


def _views(method: ir.Method, train_data: Any, report: Reporter) -> dict[str, Callable[..., Any]]:
    views: dict[str, Callable[..., Any]] = {}
    for part in method.data:
        if part.kind == "view":
            try:
                views[part.name] = make_view(part, method.params, train_data)
            except ValueError as exc:
                report("KD502", str(exc), ("data", part.name))
    return views


def _bind_rewrite(method: ir.Method, binding: Binding, report: Reporter, part: ir.DataPart) -> None:
    """A view that generates data rewrites the batch before any role runs: every role must see
    it (labels and masks are the generated ones), and its generator must have a model."""
    view: BatchRewrite = binding.views.pop(part.name)  # type: ignore[assignment]
    m = method
    blind = [r.name for r in m.roles if r.mode != "virtual" and r.view != part.name]
    blind += [t.role for t in find_all(m, ir.Tap) if t.view not in (None, part.name)]
    if blind or binding.rewrite is not None:
        why = f"`{blind[0]}` does not see it" if blind else "another view already generates"
        report(
            "KD502",
            f"view `{part.name}` ({part.func}) rewrites the whole batch, so every role must see "
            f"it and it must be the method's only generated view: {why}",
            ("data", part.name),
            help=f"add `{blind[0] if blind else 'ROLE'} sees {part.name}` for every role",
        )
        return
    role = next((r.name for r in m.roles if r.kind == view.role_kind), None)
    if role is None or (not binding.functional and role not in binding.roles):
        report(
            "KD502",
            f"view `{part.name}` ({part.func}) samples from the method's {view.role_kind}, "
            f"and it has no {view.role_kind} with a model",
            ("data", part.name),
        )
        return
    binding.views[part.name] = lambda x, y: x  # the batch is already rewritten
    binding.rewrite = (view, role)
