"""Resolve taps to hook points, and own the hooks that read them during a forward pass.

Every tap of a role is resolved before any hook is registered (as torchvision's feature
extraction does); a :class:`TapSession` owns every handle and removes them on exit, error or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdspec.compiler.taps import ModelTaps, call_model, first_tensor, logits_of, select
from kdspec.ir import models as ir


@dataclass(frozen=True)
class HookPoint:
    """A concrete place to read a tensor: the model's input or output, or a module's I/O."""

    kind: str  # "input" | "output" | "logits" | "module"
    path: str = ""
    io: str = "output"  # for modules: "output" | "input"
    call: int = 0
    select: tuple[str | int, ...] = ()


class TapError(Exception):
    """A tap cannot be resolved on a model (becomes a KD401/KD402 diagnostic)."""

    def __init__(self, code: str, message: str, help: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.help = help


def _stage_indices(tap: ir.Tap, n: int) -> list[int]:
    def norm(k: int) -> int:
        return k - 1 if k > 0 else n + k

    if tap.is_range:
        lo = 0 if tap.first is None else norm(tap.first)
        hi = n - 1 if tap.last is None else norm(tap.last)
        idx = list(range(lo, hi + 1))
    else:
        if tap.first == 0:
            raise TapError(
                "KD402",
                "stages count from 1: `stage[1]` is the first stage",
                "use `stage[1]` for the first, `stage[-1]` for the last",
            )
        idx = [norm(tap.first or 1)]
    if not idx or any(i < 0 or i >= n for i in idx):
        raise TapError(
            "KD402",
            f"the model has {n} stage{'s' * (n != 1)}; `stage[{_range_text(tap)}]` is out of range",
            "stages count from 1; negative indices count from the end",
        )
    return idx


def _range_text(tap: ir.Tap) -> str:
    if not tap.is_range:
        return str(tap.first)
    return f"{'' if tap.first is None else tap.first}..{'' if tap.last is None else tap.last}"


def resolve_tap(tap: ir.Tap, taps: ModelTaps, model: nn.Module) -> list[HookPoint]:
    """The hook points a tap reads on one model (several for a stage range)."""
    if tap.point == "input":
        return [HookPoint("input")]
    if tap.point == "logits":
        if taps.logits_shape is None:
            raise TapError(
                "KD402",
                "the model's output has no logits",
                'tap a module instead: `role."classifier"`',
            )
        return [HookPoint("logits")]
    if tap.point == "output":
        return [HookPoint("output", select=tap.select)]
    if tap.point == "embedding":
        if taps.classifier is None:
            raise TapError(
                "KD402",
                "no final classifier found, so no embedding",
                'tap the classifier\'s input explicitly: `role."fc".input`',
            )
        return [HookPoint("module", taps.classifier, "input")]
    if tap.point == "stage":
        if not taps.stages:
            raise TapError(
                "KD402",
                "no stages found in this model",
                "give the model a `kd_stages` attribute or tap module paths",
            )
        paths = [taps.stages[i] for i in _stage_indices(tap, len(taps.stages))]
        if tap.module is not None:  # a submodule of each stage: `stage[-1]."attn.query"`
            paths = [_module_path(f"{p}.{tap.module}", taps, model) for p in paths]
    else:
        paths = [_module_path(tap.module or "", taps, model)]
    return [_module_point(tap, path, taps) for path in paths]


def _module_path(path: str, taps: ModelTaps, model: nn.Module) -> str:
    """A tapped module path, checked: KD401 when the model has none, KD402 when it never runs."""
    try:
        model.get_submodule(path)
    except AttributeError:
        close = taps.suggest(path)
        hint = f"did you mean `{close[0]}`?" if close else None
        raise TapError(
            "KD401",
            f"the model has no submodule `{path}`",
            (hint + " " if hint else "") + "(`kdspec taps MODEL` lists them all)",
        ) from None
    if taps.first_call(path) is None:
        raise TapError(
            "KD402",
            f"module `{path}` does not run in the forward pass",
            "pick a module that runs (`kdspec taps MODEL` lists them)",
        )
    return path


def _module_point(tap: ir.Tap, path: str, taps: ModelTaps) -> HookPoint:
    """The hook point of a tapped module: its input, output or pre-activation, at a call."""
    io = tap.io
    if io == "preact":
        found = taps.preact_source(path)
        if found is None:
            raise TapError(
                "KD402",
                f"`{path}` does not end with an activation module, so "
                "it has no pre-activation to tap",
                "tap `.output`, or a module whose last step is an nn.ReLU",
            )
        path, io = found[0], "input"
        call = found[1]
    else:
        call = tap.call or 0
    count = taps.call_counts.get(path, 1)
    if call >= count:
        raise TapError(
            "KD402",
            f"`{path}` runs {count} time{'s' * (count != 1)} per "
            f"forward; call @{call} does not exist",
            "calls count from 0",
        )
    return HookPoint("module", path, io, call, tap.select)


class _Done(Exception):
    """Raised by a hook to end a forward once every tapped value is in (``stop_early``)."""


class TapSession:
    """Hooks on one model for a set of hook points; read :attr:`values` after a forward.

    Use as a context manager; every hook is removed on exit, even on error.
    """

    def __init__(self, model: nn.Module, points: list[HookPoint]):
        self.model = model
        self.points = list(dict.fromkeys(points))
        self.values: dict[HookPoint, Any] = {}
        self._handles: list[Any] = []
        self._counts: dict[str, int] = {}
        self._pre_counts: dict[str, int] = {}
        self._module_points = 0
        self._stop_early = False

    def __enter__(self) -> TapSession:
        by_path: dict[str, list[HookPoint]] = {}
        for p in self.points:
            if p.kind == "module":
                by_path.setdefault(p.path, []).append(p)
        for path, points in by_path.items():
            module = self.model.get_submodule(path)
            inputs = [p for p in points if p.io == "input"]
            outputs = [p for p in points if p.io != "input"]
            if inputs:  # read before the module runs: an in-place module overwrites its input
                self._handles.append(
                    module.register_forward_pre_hook(self._make_pre_hook(path, inputs))
                )
            if outputs:
                self._handles.append(module.register_forward_hook(self._make_hook(path, outputs)))
        return self

    def _make_pre_hook(self, path: str, points: list[HookPoint]):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            k = self._pre_counts.get(path, 0)
            self._pre_counts[path] = k + 1
            for p in points:
                if p.call == k:
                    value = args[0] if args else None
                    if isinstance(value, torch.Tensor) and getattr(module, "inplace", False):
                        value = value.clone()
                    self.values[p] = select(value, p.select) if p.select else value
            self._stop_if_done()

        return hook

    def _stop_if_done(self) -> None:
        if self._stop_early and len(self.values) == self._module_points:
            raise _Done

    def _make_hook(self, path: str, points: list[HookPoint]):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            k = self._counts.get(path, 0)
            self._counts[path] = k + 1
            for p in points:
                if p.call == k:
                    self.values[p] = select(output, p.select) if p.select else output
            self._stop_if_done()

        return hook

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, x: Any, stop_early: bool = False) -> Any:
        """One forward pass; fills :attr:`values` (input, output and logits points too).

        ``stop_early`` (for a frozen model under no_grad, whose later modules have no effect
        anyone reads) ends the forward as soon as every module point has its value, when no
        point needs the model's output; the return value is then ``None``.
        """
        self.values = {}
        self._counts = {}
        self._pre_counts = {}
        self._module_points = sum(p.kind == "module" for p in self.points)
        self._stop_early = (
            stop_early
            and self._module_points > 0
            and all(p.kind in ("module", "input") for p in self.points)
        )
        try:
            output = call_model(self.model, x)
        except _Done:
            output = None
        finally:
            self._stop_early = False
        for p in self.points:
            if p.kind == "input":
                self.values[p] = x
            elif p.kind == "output":
                self.values[p] = select(output, p.select) if p.select else output
            elif p.kind == "logits":
                self.values[p] = logits_of(output)
        return output

    def get(self, point: HookPoint) -> torch.Tensor:
        """The tensor read at a point in the last forward."""
        value = self.values.get(point)
        if value is None:
            raise TapError(
                "KD402", f"`{point.path or point.kind}` produced no value in this forward pass"
            )
        tensor = value if isinstance(value, torch.Tensor) else first_tensor(value)
        if tensor is None:
            raise TapError(
                "KD402",
                f"`{point.path or point.kind}` did not produce a tensor; "
                "select an element, e.g. `[0]` or `.last_hidden_state`",
            )
        return tensor
