"""Compiler support for learned and stateful components (small specs on tiny zoo models).

Covers: learned losses built on the dry run and optimised only while their term is active; the
CRD memory untouched by the dry run; list components with several inputs; ``freeze <let>``;
whole-number arguments passed as ints; losses whose sides may differ in shape (MMD, VID).
"""

from __future__ import annotations

import pytest
import torch

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.compiler.nodes import AdapterNode
from kdspec.diagnostics import KdError
from kdspec.ops import components as comp
from kdspec.zoo import build_model

B, K = 8, 10


def spec(text: str):
    return load_method("test.kd", text=text)


def batch(index: bool = True):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, 1, 8, 8, generator=g), torch.randint(0, K, (B,), generator=g)
    return (x, y, torch.arange(B)) if index else (x, y)


def models(t: str = "cnn_small", s: str = "resnet8"):
    return {
        "t": build_model(t, num_classes=K, in_channels=1),
        "s": build_model(s, num_classes=K, in_channels=1),
    }


def ids(params) -> set[int]:
    return {id(p) for p in params}


SEMCKD_STAGED = """method m {
  teacher t
  student s
  transfer sem: from t.stage[..] to s.stage[..2] with semckd
  supervise ce: s.logits with cross_entropy
  stage one for 1 epoch {
    losses sem, ce
  }
  stage two {
    losses ce
  }
}"""


def test_learned_loss_sees_unpaired_layers_and_trains_only_while_active() -> None:
    d = compile_spec(spec(SEMCKD_STAGED), models(), batch())
    (loss,) = d.terms["sem"].learned
    assert len(loss.queries) == 2 and len(loss.keys) == 3  # 2 student x 3 teacher stages
    d.set_stage("one")
    assert ids(loss.parameters()) <= ids(d.trainable_parameters())
    d.set_stage("two")
    assert not ids(loss.parameters()) & ids(d.trainable_parameters())
    assert not any(p.requires_grad for p in loss.parameters())


CRD = """method m {
  teacher t
  student s
  transfer crd: from embed(t.embedding, dim=d) to embed(s.embedding, dim=d) with crd_nce(k=5)
  param d = 16
}"""


def test_crd_memory_is_sized_by_num_samples_and_untouched_by_the_dry_run(monkeypatch) -> None:
    modes: list[bool] = []
    forward = comp.CRDLoss.forward

    def spy(self, t, s, env):  # type: ignore[no-untyped-def]
        modes.append(self.training)
        return forward(self, t, s, env)

    monkeypatch.setattr(comp.CRDLoss, "forward", spy)
    d = compile_spec(spec(CRD), models(), batch(), num_samples=40)
    (crd,) = d.terms["crd"].learned
    assert crd.memory_s.shape == (40, 16)  # `dim=d` evaluates to the int 16
    assert modes == [False]  # the dry run scores in eval mode: no memory update, no Z
    assert (crd.z < 0).all()
    before = crd.memory_s.clone()
    out = d(batch())
    out.loss.backward()
    assert modes == [False, True]
    assert not torch.equal(crd.memory_s, before) and (crd.z > 0).all()
    heads = [p for n, p in d.named_parameters() if "adapters" in n]
    assert heads and ids(heads) <= ids(d.trainable_parameters())


def test_crd_without_indices_or_sizes_is_a_compile_error() -> None:
    with pytest.raises(KdError, match="sample indices"):
        compile_spec(spec(CRD), models(), batch(index=False), num_samples=40)
    with pytest.raises(KdError, match="num_samples"):
        compile_spec(spec(CRD), models(), batch())


def test_gate_takes_extra_inputs_as_lists() -> None:
    low = load_method("specs/one.kd", overrides={"m": 4})
    s = build_model("resnet8", num_classes=K, in_channels=1)
    d = compile_spec(low, {"s": s}, batch())
    gates = [n for t in d.terms.values() for n in t.modules()
             if isinstance(n, AdapterNode) and n.func == "gate"]  # fmt: skip
    assert gates and len(gates[0].extra) == 2  # s.logits and the 3 extra branches
    assert gates[0].adapters[0].gate.fc.out_features == 4


FROZEN_LET = """method m {
  teacher t
  student s
  let code = paraphraser(stopgrad(t.stage[-1]))
  transfer rec: from stopgrad(t.stage[-1]) to paraphraser_decoder(code) with mse
  transfer ft: normalize from code to translator(s.stage[-1]) with l1
  stage first for 1 epoch {
    train code, rec
    losses rec
  }
  stage second {
    freeze code
    losses ft
  }
}"""


def test_freeze_let_keeps_a_shared_learned_part_fixed() -> None:
    d = compile_spec(spec(FROZEN_LET), models(), batch())
    code = ids(d.compiled.lets["code"].parameters())
    assert code
    d.set_stage("first")
    assert code <= ids(d.trainable_parameters())
    d.set_stage("second")
    trainable = ids(d.trainable_parameters())
    assert not code & trainable
    translator = [n for n in d.terms["ft"].modules() if isinstance(n, AdapterNode)
                  and n.func == "translator"]  # fmt: skip
    assert ids(translator[0].parameters()) <= trainable


def test_mmd_and_gaussian_sides_may_differ_in_shape() -> None:
    for name in ("nst", "vid"):
        d = compile_spec(load_method(f"specs/{name}.kd"), models(), batch())
        out = d(batch())
        assert torch.isfinite(out.loss)
