"""A frozen teacher compiled for inference: batch norm folded where no tap reads inside."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close
from torch import nn

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.compiler.hooks import HookPoint, TapSession
from kdspec.compiler.inference import fold_plan
from kdspec.zoo import build_model

FITNETS = """method fitnets {
  teacher t
  student s
  transfer hint: from t.stage[2] to regressor(s.stage[2]) with mse
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  supervise ce: s.logits with cross_entropy
}"""


def _trained_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with statistics and affine parameters away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Within 1e-5 of the eager value (the issue's bound), relative to its largest magnitude."""
    assert_close(a, b, rtol=1e-5)
    return True


def _tapped(model, points, x, plan=None):
    s = TapSession(model, points)
    with torch.no_grad(), s:
        if plan is None:
            s.run(x)
        else:
            with plan:
                s.run(x)
    return {p: s.get(p) for p in points}


def test_folded_taps_equal_the_eager_teacher_and_the_model_is_untouched() -> None:
    torch.manual_seed(0)
    t = _trained_bn(build_model("resnet20", 10, 3))
    before = {k: v.clone() for k, v in t.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    points = [HookPoint("module", "layer2"), HookPoint("logits")]
    plan = fold_plan(t, lambda: _tapped(t, points, x), untouchable=["layer2"])
    assert len(plan.folded) == 21  # every conv + bn pair: the stem, 18 in blocks, 2 shortcuts
    eager, folded = _tapped(t, points, x), _tapped(t, points, x, plan)
    assert all(_close(folded[p], eager[p]) for p in points)
    assert not all(torch.equal(folded[p], eager[p]) for p in points)  # it did run folded
    assert t.state_dict().keys() == before.keys()
    assert all(torch.equal(t.state_dict()[k], v) for k, v in before.items())
    assert all("forward" not in m.__dict__ for m in t.modules())  # restored on exit


def test_no_pair_a_tap_reads_inside_is_folded() -> None:
    t = _trained_bn(build_model("resnet8", 10, 3))
    x = torch.randn(4, 3, 32, 32)
    for inside in ("conv1", "bn1"):  # the stem's pair, read at its middle or its end
        points = [HookPoint("module", inside), HookPoint("logits")]
        plan = fold_plan(t, lambda p=points: _tapped(t, p, x), untouchable=[inside])
        assert ("conv1", "bn1") not in plan.folded and plan.folded
        eager, folded = _tapped(t, points, x), _tapped(t, points, x, plan)
        assert all(_close(folded[p], eager[p]) for p in points)


class _Shared(nn.Module):
    """The convolution's output also feeds an addition no hook sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        return self.bn(c) + c


def test_a_pair_whose_convolution_is_read_elsewhere_is_not_folded() -> None:
    m = _trained_bn(_Shared())
    x = torch.randn(2, 3, 6, 6)
    points = [HookPoint("output")]
    assert fold_plan(m, lambda: _tapped(m, points, x), untouchable=[]).folded == []


def test_fused_weights_follow_in_place_weight_changes() -> None:
    t = _trained_bn(build_model("resnet8", 10, 3))
    x = torch.randn(4, 3, 32, 32)
    points = [HookPoint("logits")]
    plan = fold_plan(t, lambda: _tapped(t, points, x), untouchable=[])
    _tapped(t, points, x, plan)
    t.load_state_dict(_trained_bn(build_model("resnet8", 10, 3), seed=1).state_dict())
    eager, folded = _tapped(t, points, x), _tapped(t, points, x, plan)
    assert _close(folded[points[0]], eager[points[0]])


@pytest.mark.parametrize("fold", [True, False])
def test_a_compiled_frozen_teacher_folds_and_the_student_still_learns(fold: bool) -> None:
    torch.manual_seed(0)
    t, s = _trained_bn(build_model("resnet8", 10, 3)), build_model("resnet8", 10, 3)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    d = compile_spec(load_method("f.kd", text=FITNETS), {"t": t, "s": s}, (x, y, torch.arange(6)))
    d.set_stage(d.method.effective_stages()[0].name)
    d.train()
    folded: list[bool] = []  # whether the stem's convolution ran folded
    assert not d.fold_batch_norm  # an option: folded values equal the eager ones to ~1e-6 only
    d.fold_batch_norm = fold
    t.conv1.register_forward_pre_hook(lambda m, a: folded.append("forward" in m.__dict__))
    out = d((x, y, torch.arange(6)))
    out.loss.backward()
    assert folded[-1] is fold and (fold or not any(folded))  # the step itself ran folded
    if fold:  # the batch norm before the tapped stage output stays (OFD reads such a one)
        (stage,) = [p for t, ps in d.compiled.points.items() if t.role == "t" for p in ps if p.path]
        before = d.compiled.model_taps["t"].preceding_batchnorm(stage.path)
        pairs = d.folded_batch_norms()["t"]
        assert pairs and before and all(bn != before for _, bn in pairs)
    assert all(p.grad is None for p in t.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
