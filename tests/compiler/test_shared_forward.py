"""One teacher forward per step, shared by every term, student and peer; tapped tensors
released once the step is done (nothing in the Distiller keeps them)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch
from torch import nn

from kdspec.api import load_method
from kdspec.compiler import compile_spec

SPEC = """
method shared {
  teacher t
  student s1
  student s2
  transfer kd1: softmax(2) from t.logits to s1.logits with kl
  transfer kd2: softmax(4) from t.logits to s2.logits with kl
  transfer hint1: from t."1" to linear(s1."1") with mse
  transfer hint2: from t."1" to linear(s2."1") with mse
  transfer mutual: softmax(1) from s2.logits to s1.logits with kl
  supervise ce1: s1.logits with cross_entropy
  supervise ce2: s2.logits with cross_entropy
}
"""


def _mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_every_role_runs_once_per_step_and_its_taps_are_released() -> None:
    torch.manual_seed(0)
    models = {"t": _mlp(10), "s1": _mlp(6), "s2": _mlp(5)}
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    d = compile_spec(load_method("shared", text=SPEC), models, (x, y), num_classes=3)
    d.train()
    calls = {name: 0 for name in models}
    taps: list[weakref.ref[torch.Tensor]] = []

    def counter(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            calls[name] += 1

        return hook

    for name, model in d.roles.items():
        model.register_forward_pre_hook(counter(name))
        model[1].register_forward_hook(lambda m, a, out: taps.append(weakref.ref(out)))
    for step in range(2):
        out = d((x, y))
        assert set(out.terms) == {"kd1", "kd2", "hint1", "hint2", "mutual", "ce1", "ce2"}
        assert calls == {"t": step + 1, "s1": step + 1, "s2": step + 1}  # one forward each
        out.loss.backward()
        del out
        gc.collect()
        assert len(taps) == 3 * (step + 1)
        assert all(ref() is None for ref in taps)  # no tapped tensor outlives its step
