"""The value of a language expression on given tensors, for tests of functions written in .kd.

The prelude's functions (``kdspec/prelude/*.kd``) have no Python to call: a test writes the call
as a spec would (``attention(s.stage[1], p=4)``) and gets the tensor the compiler computes for
it, in functional mode (tensors given by tap text).
"""

from __future__ import annotations

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
