"""A frozen teacher runs under no_grad only as far as its taps, and is not switched every step."""

from __future__ import annotations

import torch
from tolerance import assert_close
from torch import nn

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.zoo import build_model

FITNETS = """method fitnets {
  teacher t
  student s
  transfer hint: from t.stage[2] to regressor(s.stage[2]) with mse
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  supervise ce: s.logits with cross_entropy
  stage hints for 25% {
    train s.stage[..2], hint
    losses hint
  }
  stage distill {
    losses kd, ce
  }
}"""


def batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def record(module: nn.Module, seen: list[torch.Tensor]) -> None:
    module.register_forward_hook(lambda m, a, out: seen.append(out))


def setup():
    t, s = build_model("resnet8", 10, 1), build_model("resnet8", 10, 1)
    for p in t.parameters():  # a teacher that is not at its initialisation
        p.data.add_(0.1 * torch.randn_like(p))
    d = compile_spec(load_method("f.kd", text=FITNETS), {"t": t, "s": s}, batch())
    return d, t, s


def test_hint_stage_stops_the_teacher_after_its_last_tap_with_eager_values() -> None:
    d, t, _ = setup()
    mid, late, head = [], [], []
    record(t.layer2, mid), record(t.layer3, late), record(t.fc, head)
    d.set_stage("hints")
    d.train()
    x, y = batch()
    out = d((x, y))
    assert len(mid) == 1 and late == [] and head == []  # nothing after stage 2 ran
    assert not mid[0].requires_grad
    t.eval()
    with torch.no_grad():
        eager = t.layer2(t.layer1(t.relu(t.bn1(t.conv1(x)))))
    assert_close(mid[0], eager)
    reg = d.terms["hint"].target.inner.adapters[0]
    s = d.roles["s"]
    hand = nn.functional.mse_loss(reg(s.layer2(s.layer1(s.relu(s.bn1(s.conv1(x)))))), eager)
    assert_close(out.loss, hand)
    d.set_stage("distill")
    d((x, y))
    assert len(late) == 1 and len(head) == 1  # the logits need the whole teacher


def test_frozen_teacher_stays_in_eval_mode_and_is_not_switched_per_step(monkeypatch) -> None:
    d, t, s = setup()
    d.set_stage("hints")
    d.train()
    assert not t.training and s.training
    calls = []
    original = t.train
    monkeypatch.setattr(t, "train", lambda mode=True: calls.append(mode) or original(mode))
    for _ in range(3):
        d(batch()).loss.backward()
    assert calls == [] and not t.training
    d.eval()
    assert not s.training
    d.train()
    assert s.training and not t.training


def test_a_teacher_switched_to_train_by_hand_still_runs_in_eval_mode() -> None:
    d, t, _ = setup()
    d.set_stage("distill")
    t.train()
    seen = []
    t.bn1.register_forward_hook(lambda m, a, out: seen.append(m.training))
    d(batch())
    assert seen == [False] and t.training  # run in eval mode, the user's mode restored


TWO_STAGES = """method warm {
  peer p1, p2
  transfer a: softmax from stopgrad(p2.logits) to p1.logits with kl
  transfer b: softmax from stopgrad(p1.logits) to p2.logits with kl
  stage first for 50% {
    train p1
    losses a
  }
  stage both {
    train p1, p2
    losses a, b
  }
}"""


def test_a_role_frozen_in_one_stage_trains_in_train_mode_in_the_next() -> None:
    p1, p2 = build_model("resnet8", 10, 1), build_model("resnet8", 10, 1)
    d = compile_spec(load_method("w.kd", text=TWO_STAGES), {"p1": p1, "p2": p2}, batch())
    d.set_stage("first")
    d.train()
    assert p1.training and not p2.training
    d.set_stage("both")
    assert p1.training and p2.training
