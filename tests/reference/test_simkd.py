"""SimKD (``specs/simkd.kd``) against an independent float64 implementation of its equations.

The spec reuses the teacher's classifier on the student's projected feature, which only a model
has: it is compiled onto zoo models (not in functional mode like ``test_paper_specs.py``). The
reference (``paper_refs.simkd``) gets the tapped feature maps from hooks of its own on the
models' modules, a projector built here in plain torch with the compiled projector's weights,
and the teacher's ``fc``; the training loss, its gradients, the deployed prediction and the
gradient through the reused classifier must all match to 1e-6 (relative) in float64.
"""

from __future__ import annotations

from pathlib import Path

import paper_refs as ref
import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close
from torch import Tensor, nn

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.compiler.nodes import AdapterNode
from kdspec.zoo import build_model

SPEC = Path(__file__).resolve().parents[2] / "specs" / "simkd.kd"
B, K = 8, 10
# The last stage of each zoo model on [B, 1, 8, 8] inputs: (module, channels, side).
LAST = {"cnn_small": ("stage3", 128, 2), "resnet8": ("layer3", 64, 2), "cnn_tiny": ("stage2", 8, 4)}


def models(teacher: str, student: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    t = build_model(teacher, num_classes=K, in_channels=1).double()
    s = build_model(student, num_classes=K, in_channels=1).double()
    return t, s


def batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.arange(B) % K, torch.arange(B)


def projector(c_s: int, c_t: int) -> nn.Sequential:
    """Three conv1x1-BN-ReLU blocks ``c_s -> c_t -> c_t -> c_t`` (the spec's projector)."""
    layers: list[nn.Module] = []
    for c_in in (c_s, c_t, c_t):
        layers += [nn.Conv2d(c_in, c_t, 1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU()]
    return nn.Sequential(*layers).double()


def copy_projector(d: nn.Module, proj: nn.Sequential) -> list[Tensor]:
    """The compiled projector's weights into ``proj``; returns the compiled parameters."""
    nodes = [m for m in d.terms["feat"].modules() if isinstance(m, AdapterNode)]
    blocks = [n.adapters[0] for n in reversed(nodes)]  # outermost first in modules(): reverse
    assert len(blocks) == 3
    for i, block in enumerate(blocks):
        proj[3 * i].load_state_dict(block[0].state_dict())
        proj[3 * i + 1].load_state_dict(block[1].state_dict())
    return [p for block in blocks for p in block.parameters()]


def feature(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """The output of one module of ``model`` on ``x`` (a hook of this test's own)."""
    got: list[Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: got.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return got[0]


@pytest.mark.parametrize(
    ("teacher", "student"), [("cnn_small", "resnet8"), ("cnn_small", "cnn_tiny")]
)
def test_simkd_matches_its_equations(teacher: str, student: str) -> None:
    t, s = models(teacher, student)
    x, y, idx = batch()
    d = compile_spec(load_method(SPEC), {"t": t, "s": s}, (x, y, idx), num_classes=K)
    proj = projector(LAST[student][1], LAST[teacher][1])
    compiled = copy_projector(d, proj)
    d.set_stage("reuse")
    d.train()
    student_params = [p for p in s.parameters() if p.requires_grad]
    assert student_params, "the stage trains the student up to its last stage"

    # Training: MSE between the projection and the teacher's map, the only loss.
    loss = d((x, y, idx)).loss
    t.eval()
    proj.train()
    with torch.no_grad():
        f_t = feature(t, LAST[teacher][0], x)
    f_s = feature(s, LAST[student][0], x)
    paper_loss, _ = ref.simkd(f_t, f_s, proj, t.fc)
    assert_close(loss, paper_loss, what="loss")
    mine = torch.autograd.grad(loss, student_params + compiled, allow_unused=True)
    paper = torch.autograd.grad(
        paper_loss, student_params + list(proj.parameters()), allow_unused=True
    )
    for i, (a, b) in enumerate(zip(mine, paper, strict=True)):
        assert (a is None) == (b is None), f"parameter {i}"
        if a is not None:
            assert_close(a, b, what=f"d/d parameter {i}")

    # The prediction through the teacher's classifier, with gradient into the student and the
    # projector only (the teacher's classifier is reused as it is).
    for p in t.parameters():
        p.requires_grad_(True)  # even so, the frozen teacher's weights get no gradient
    pred = d.predict("s", x)
    f_s = feature(s, LAST[student][0], x)
    _, paper_pred = ref.simkd(f_t, f_s, proj, t.fc)
    assert_close(pred, paper_pred, what="prediction")
    ce, paper_ce = F.cross_entropy(pred, y), F.cross_entropy(paper_pred, y)
    mine = torch.autograd.grad(ce, student_params + compiled, allow_unused=True, retain_graph=True)
    paper = torch.autograd.grad(
        paper_ce, student_params + list(proj.parameters()), allow_unused=True
    )
    for i, (a, b) in enumerate(zip(mine, paper, strict=True)):
        if a is not None or b is not None:
            assert_close(a, b, what=f"prediction: d/d parameter {i}")
    ce.backward()
    assert all(p.grad is None for p in t.parameters()), "the teacher's classifier was trained"

    # Deployed (evaluation): the same computation in eval mode, as `kdspec train` scores it.
    deployed = d.deployed("s")
    deployed.eval()
    s.eval()
    proj.eval()
    with torch.no_grad():
        got = deployed(x)
        _, want = ref.simkd(f_t, feature(s, LAST[student][0], x), proj, t.fc)
    assert_close(got, want, what="deployed prediction")
    assert d.deployed("t") is t  # a role without `predict` is its model


def test_a_teacher_stage_applied_to_a_student_feature() -> None:
    # `t.stage[-1](x)`: the student's stage-2 map, sized by the regressor to what the teacher's
    # last stage takes, goes through that stage; the teacher's weights get no gradient.
    t, s = models("cnn_small", "resnet8")
    x, y, idx = batch()
    text = """method tail {
  teacher t
  student s
  transfer tail: from t.stage[-1] to t.stage[-1](regressor(s.stage[2])) with mse
}"""
    d = compile_spec(load_method("tail.kd", text=text), {"t": t, "s": s}, (x, y, idx))
    d.set_stage("main")
    d.train()
    loss = d((x, y, idx)).loss
    (reg,) = [m.adapters[0] for m in d.terms["tail"].modules() if isinstance(m, AdapterNode)]
    t.eval()
    with torch.no_grad():
        f_t = feature(t, "stage3", x)
    paper = F.mse_loss(t.stage3(reg(feature(s, "layer2", x))), f_t)
    assert_close(loss, paper, what="loss")
    loss.backward()
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None for p in reg.parameters())
