"""The value of a language expression on given tensors, for tests of functions written in .kd.

The prelude's functions (``kdspec/prelude/*.kd``) have no Python to call: a test writes the call
as a spec would (``attention(s.stage[1], p=4)``) and gets the tensor the compiler computes for
it, in functional mode (tensors given by tap text).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from kdspec.api import load_method
from kdspec.compiler import compile_spec


def value(
    call: str,
    tensors: dict[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """The value of ``call`` (an expression over the student's taps) on ``tensors``.

    Distributions come back as log-probabilities, as the compiler carries them.
    """
    text = (
        f"method probe {{\n  student s\n  transfer v: from stopgrad({call}) to {call} with mse\n}}"
    )
    low = load_method("probe.kd", text=text)
    batch = {**tensors, "labels": labels}
    example = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    d = compile_spec(low, None, example, num_classes=num_classes)
    env = d._begin(batch)
    try:
        (out,) = d.terms["v"].target(env)
    finally:
        d._batch = None
    return out


def loss(
    loss_call: str,
    teacher: torch.Tensor,
    student: torch.Tensor,
    tap: str = "stage[1]",
    knowledge: str = "",
) -> torch.Tensor:
    """The value of a loss (``partial_l2``, ``kl(reduction=sum)``, ...) between two tensors,
    after an optional knowledge pipeline (``pkt_affinity``) applied to both."""
    term = f"transfer v: {knowledge} from t.{tap} to s.{tap} with {loss_call}"
    text = f"method probe {{\n  teacher t\n  student s\n  {term}\n}}"
    low = load_method("probe.kd", text=text)
    batch = {f"t.{tap}": teacher, f"s.{tap}": student}
    d = compile_spec(low, None, {k: v.detach() for k, v in batch.items()})
    return d(batch).loss


def _literal(v: object) -> str:
    """A Python keyword value as .kd text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return repr(v)


class _Losses:
    """The prelude's losses called as the Python functions they replaced took them.

    ``L.kl(t, s, reduction="sum")``: ``kl`` and ``soft_ce`` take log-probabilities and read them
    as a softmax of log-probabilities (the same distribution, the same gradients); the other
    losses take any tensor at a tap (``mmd`` and ``pearson`` from a ``def``, which asks for no
    knowledge kind). Spec errors come back as ``ValueError``.
    A one-input loss (``cross_entropy``) takes logits and labels, as ``supervise`` gives them.
    Functions still written in Python are returned as they are.
    """

    LOG_PROBS = frozenset({"kl", "soft_ce"})
    # Asking for a kind a raw tap is not: called from a `def`, at a tap of these axes.
    ANY_KIND: ClassVar[dict[str, str]] = {"mmd": "stage[1]", "pearson": "logits"}

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        from kdspec.ops import LOSSES
        from kdspec.vocabulary import FUNCTIONS

        if name == "LOSSES":
            return LOSSES
        if name in LOSSES:
            return LOSSES[name]
        if name in FUNCTIONS and FUNCTIONS[name].inputs == 1:
            return functools.partial(supervised_loss, name)

        def call(t: torch.Tensor, s: Any, *more: torch.Tensor, **kwargs: object) -> torch.Tensor:
            from kdspec.diagnostics import KdError

            args = ", ".join(f"{k}={_literal(v)}" for k, v in kwargs.items())
            try:
                if isinstance(s, tuple) or more:  # a Gaussian: (mean, var), or mean and var
                    mean, var = s if isinstance(s, tuple) else (s, *more)
                    return _gaussian_loss(name, t, mean, var)
                if name in self.LOG_PROBS:
                    return loss(f"{name}({args})", t, s, tap="logits", knowledge="softmax")
                if name in self.ANY_KIND:
                    body = f"{name}(t, s{', ' if args else ''}{args})"
                    return _def_loss(body, t, s, self.ANY_KIND[name])
                return loss(f"{name}({args})", t, s)
            except KdError as exc:
                raise ValueError(str(exc)) from exc

        return call


def supervised_loss(
    name: str, logits: torch.Tensor, labels: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    """``supervise v: s.logits with name(**kwargs)``: [B, C] logits with [B] labels, or [B, L, C]
    token logits with [B, L] labels (-100: no loss there)."""
    args = ", ".join(f"{k}={_literal(v)}" for k, v in kwargs.items())
    text = f"method probe {{\n  student s\n  supervise v: s.logits with {name}({args})\n}}"
    batch: dict[str, Any] = {"s.logits": logits, "labels": labels}
    d = compile_spec(
        load_method("probe.kd", text=text),
        None,
        {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in batch.items()},
    )
    return d(batch).loss


def _gaussian_loss(
    name: str, teacher: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """``name`` between a teacher and the Gaussian ``gaussian(mean, var)`` of two student taps."""
    text = (
        "method probe {\n  teacher t\n  student s\n"
        f"  transfer v: from t.stage[1] to gaussian(s.stage[1], s.stage[2]) with {name}\n}}"
    )
    batch = {"t.stage[1]": teacher, "s.stage[1]": mean, "s.stage[2]": var}
    d = compile_spec(
        load_method("probe.kd", text=text), None, {k: v.detach() for k, v in batch.items()}
    )
    return d(batch).loss


def _def_loss(body: str, teacher: torch.Tensor, student: torch.Tensor, tap: str) -> torch.Tensor:
    text = (
        f"def probe(t, s) = {body}\n"
        "method probe {\n  teacher t\n  student s\n"
        f"  transfer v: from t.{tap} to s.{tap} with probe\n}}"
    )
    low = load_method("probe.kd", text=text)
    batch = {f"t.{tap}": teacher, f"s.{tap}": student}
    d = compile_spec(low, None, {k: v.detach() for k, v in batch.items()})
    return d(batch).loss


losses = _Losses()
