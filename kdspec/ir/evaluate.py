"""Evaluate numeric IR expressions: parameters, weights and schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdspec.ir import models as ir
from kdspec.ir.traverse import fold

__all__ = [
    "EvalError",
    "Progress",
    "Scheduled",
    "at_progress",
    "compile_value",
    "evaluate",
    "schedule_value",
    "uses_progress",
]

_COMPARE = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class EvalError(ValueError):
    """An expression is not a number (e.g. a tap used where a weight is expected)."""


class NumericError(EvalError):
    """Arithmetic without a finite result: overflow, division by zero, `(-8)^0.5`."""


@dataclass(frozen=True)
class Progress:
    """Where training is, for schedules: epoch (fractional) within the stage, and its length.

    ``kdspec train`` and :meth:`kdspec.compiler.Distiller.stages` give every step
    ``Progress.at(step, steps_per_epoch, stage_steps)``; a loop of one's own may pass it to
    ``distiller(batch, progress=...)``.
    """

    epoch: float = 0.0
    stage_epochs: float = 1.0

    @classmethod
    def at(cls, step: int, steps_per_epoch: int, stage_steps: int) -> Progress:
        """Progress before the optimizer step ``step`` (0-based) of a stage of ``stage_steps``."""
        return cls(epoch=step / steps_per_epoch, stage_epochs=stage_steps / steps_per_epoch)


MAX_DEPTH = 400
"""Deepest expression evaluated, with its parameters inlined: the parser bounds one expression
(KD106), parameters chain them. Evaluation runs on an explicit stack, so the bound is a
diagnostic for absurd specs, not a guard for Python's recursion limit."""

MAX_HOPS = 50
"""Most parameter references followed on one path before parameters count as a cycle."""


def uses_progress(e: ir.Expr | None, params: Mapping[str, ir.Expr]) -> bool:
    """Whether a value changes as training goes on: it contains a schedule (through params too).

    In a numeric expression every call is a schedule (anything else fails to evaluate).
    """
    stack: list[tuple[ir.Expr | None, int]] = [(e, 0)]
    while stack:
        node, depth = stack.pop()
        if node is None or depth > MAX_DEPTH:  # deeper than `evaluate` allows
            continue
        if isinstance(node, ir.Call):
            return True
        if isinstance(node, ir.ParamRef):
            inner = [params[node.name]] if node.name in params else []
        elif isinstance(node, ir.BinOp):
            inner = [node.left, node.right]
        elif isinstance(node, ir.Neg):
            inner = [node.operand]
        elif isinstance(node, ir.ListE):
            inner = list(node.items)
        else:
            inner = []
        stack.extend((i, depth + 1) for i in inner)
    return False


@dataclass(frozen=True, eq=False)
class Scheduled:
    """A compiled value that depends on where training is: evaluated afresh at every step.

    The compiler stores it wherever a number (or a list of numbers) is used at run time (a
    term's weight, a transform's or a loss's parameter, ensemble weights, an EMA decay), and
    the runtime node calls :func:`at_progress` with the step's :class:`Progress`.
    """

    expr: ir.Expr
    params: Mapping[str, ir.Expr]

    def at(self, progress: Progress | None) -> float | str | list[object]:
        return evaluate(self.expr, dict(self.params), progress)


def compile_value(e: ir.Expr, params: Mapping[str, ir.Expr]) -> object:
    """A constant's value, or a :class:`Scheduled` when it changes during training."""
    if uses_progress(e, params):
        return Scheduled(e, params)
    return evaluate(e, dict(params))


def at_progress(value: Any, progress: Progress | None) -> Any:
    """A compiled value at ``progress`` (constants are returned as they are)."""
    if isinstance(value, Scheduled):
        return value.at(progress)
    if isinstance(value, dict):
        return {k: at_progress(v, progress) for k, v in value.items()}
    if isinstance(value, list):
        return [at_progress(v, progress) for v in value]
    return value


def evaluate(
    e: ir.Expr,
    params: dict[str, ir.Expr],
    progress: Progress | None = None,
) -> float | str | list[object]:
    """The value of a constant expression, with schedules evaluated at ``progress``.

    Without ``progress`` a schedule evaluates to its largest value (used for static checks).
    Evaluated on an explicit stack (:func:`kdspec.ir.traverse.fold`): however deep an
    expression is, it ends in a value or an :class:`EvalError`, never a ``RecursionError``.
    """
    run = _Evaluation(params, progress)
    return fold(_Frame(e, 0, 0), run.parts, run.combine)


@dataclass(frozen=True)
class _Frame:
    """An expression being evaluated, how deep it sits and how many parameters led to it."""

    expr: ir.Expr
    depth: int
    hops: int


Value = float | str | list[object]


@dataclass(frozen=True)
class _Evaluation:
    """One call of :func:`evaluate`: what each expression needs, and its value from theirs."""

    params: Mapping[str, ir.Expr]
    progress: Progress | None

    def parts(self, frame: _Frame) -> list[_Frame]:
        """The expressions whose values ``frame``'s needs, in evaluation order."""
        e, depth, hops = frame.expr, frame.depth + 1, frame.hops
        if frame.depth > MAX_DEPTH:  # the parser bounds one expression; parameters chain them
            raise EvalError("the expression, with its parameters inlined, is nested too deeply")
        if isinstance(e, ir.ParamRef):
            if e.name not in self.params:
                raise EvalError(f"unknown parameter `{e.name}`")
            if hops > MAX_HOPS:
                raise EvalError("parameters refer to each other in a cycle")
            return [_Frame(self.params[e.name], depth, hops + 1)]
        if isinstance(e, ir.ListE):
            return [_Frame(i, depth, hops) for i in e.items]
        if isinstance(e, ir.Neg):
            return [_Frame(e.operand, depth, hops)]
        if isinstance(e, ir.BinOp):
            return [_Frame(e.left, depth, hops), _Frame(e.right, depth, hops)]
        if isinstance(e, ir.Call):
            return [_Frame(v, depth, hops) for v in e.kwargs.values()]
        return []

    def combine(self, frame: _Frame, values: list[Value]) -> Value:
        """The value of ``frame``'s expression from the values of its parts."""
        e = frame.expr
        if isinstance(e, ir.Num):
            return _finite(e.value)
        if isinstance(e, ir.Str):
            return e.value
        if isinstance(e, ir.ParamRef):
            return values[0]
        if isinstance(e, ir.ListE):
            return list(values)
        if isinstance(e, ir.Neg):
            return -_num(values[0])
        if isinstance(e, ir.BinOp):
            left, right = values
            if e.op in ("==", "!=") and not (_is_num(left) and _is_num(right)):
                return 1.0 if (left == right) == (e.op == "==") else 0.0  # words, lists
            return _finite(_arith(e.op, _num(left), _num(right)))
        if isinstance(e, ir.Call):
            return schedule_value(e.func, dict(zip(e.kwargs, values, strict=True)), self.progress)
        raise EvalError(f"`{type(e).__name__}` is not a number")


def _arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            raise NumericError("division by zero")
        return a / b
    if op in _COMPARE:
        return 1.0 if _COMPARE[op](a, b) else 0.0
    if a == 0 and b < 0:
        raise NumericError("zero raised to a negative power")
    if a < 0 and not b.is_integer():
        raise NumericError(f"a negative number raised to the fractional power {b:g}")
    try:
        return float(a**b)
    except OverflowError:
        raise NumericError("the result is too large (overflow)") from None


def _finite(v: float) -> float:
    """Every value a spec computes is finite: `1e400` or `2^2^2^2^2^2` is an error, not inf."""
    if isinstance(v, float) and not math.isfinite(v):
        raise NumericError("the value is not finite (too large for a float)")
    return v


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise EvalError(f"`{v}` is not a number")
    return float(v)


def schedule_value(func: str, kw: Mapping[str, object], progress: Progress | None) -> float:
    """The factor a schedule gives at a point of training (its maximum without ``progress``)."""
    if func == "warmup":
        epochs = _num(kw.get("epochs", 1))
        if progress is None:
            return 1.0
        return min(1.0, progress.epoch / epochs) if epochs > 0 else 1.0
    if func in ("ramp", "anneal", "cosine_schedule"):
        default_start, default_end = (0.0, 1.0) if func == "ramp" else (1.0, 0.0)
        start = _num(kw.get("start", default_start))
        end = _num(kw.get("end", default_end))
        if progress is None:
            return max(start, end)
        frac = min(1.0, max(0.0, progress.epoch / max(progress.stage_epochs, 1e-12)))
        if func == "cosine_schedule":
            return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
        return start + (end - start) * frac
    if func == "step":
        every = _num(kw.get("every", 1))
        gamma = _num(kw.get("gamma", 0.1))
        if progress is None:
            return 1.0
        return float(gamma ** math.floor(progress.epoch / every))
    raise EvalError(f"`{func}` is not a schedule")
