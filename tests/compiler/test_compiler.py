"""The compiler on tiny CPU models: taps, hooks, stages, gradients, EMA, adapters, shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close
from torch import nn

from kdspec.api import load_method
from kdspec.compiler import Progress, compile_spec, discover
from kdspec.diagnostics import KdError
from kdspec.ir.printer import tap_text
from kdspec.zoo import build_model


def spec(text: str, name: str = "test.kd"):
    return load_method(name, text=text)


def batch(n: int = 8, classes: int = 10, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, *shape, generator=g),
        torch.randint(0, classes, (n,), generator=g),
        torch.arange(n),
    )


def no_hooks(*models: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks
        for model in models
        for m in model.modules()
    )


HINTON = """method hinton {
  param T = 4
  param alpha = 0.9
  teacher t
  student s
  transfer kd: softmax(T) from t.logits to s.logits with kl weight alpha * T^2
  supervise ce: s.logits with cross_entropy weight 1 - alpha
}"""


# -- abstract taps on several architectures ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stages", "embedding"),
    [
        ("resnet8", [(16, 8, 8), (32, 4, 4), (64, 2, 2)], (64,)),
        ("mobilenetv2", None, (1280,)),
        ("mlp", [(128,), (64,)], (64,)),
    ],
)
def test_abstract_taps_resolve_on_zoo_architectures(name, stages, embedding):
    model = build_model(name, 10, 1)
    taps = discover(model, torch.randn(2, 1, 8, 8))
    assert taps.logits_shape == (10,)
    assert taps.classifier is not None
    rows = {r[0]: r[2] for r in taps.rows()}
    assert rows["embedding"] == "[" + ", ".join(map(str, embedding)) + "]"
    if stages is not None:
        got = [taps.first_call(p).out_shape for p in taps.stages]
        assert got == stages
    assert no_hooks(model)


def test_stages_found_without_hints_by_spatial_resolution():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    taps = discover(model, torch.randn(2, 1, 8, 8))
    assert taps.stages == ["3", "5"]  # the stem (8x8) is not a stage
    assert taps.classifier == "8"


# -- hooks ------------------------------------------------------------------------------------


def test_hooks_are_removed_after_every_forward_and_on_error():
    t, s = build_model("resnet8", 10, 1), build_model("cnn_tiny", 10, 1)
    d = compile_spec(spec(HINTON), {"t": t, "s": s}, batch())
    d(batch())
    assert no_hooks(t, s)
    with pytest.raises(RuntimeError):
        d((torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)))  # wrong channels
    assert no_hooks(t, s)


def test_unknown_module_path_is_a_diagnostic_with_suggestion():
    text = HINTON.replace("from t.logits", 'from t."layer4".input')
    t, s = build_model("resnet8", 10, 1), build_model("resnet8", 10, 1)
    with pytest.raises(KdError) as info:
        compile_spec(spec(text), {"t": t, "s": s}, batch())
    d = info.value.diagnostics[0]
    assert d.code == "KD401"
    assert "layer4" in d.message and "did you mean `layer" in (d.help or "")
    assert d.source is not None and d.source.line_col(d.span.start)[0] == 6


def test_module_path_under_each_stage_reads_that_submodule():
    """`t.stage[2..3]."attention.self.query"`: a path under each tapped stage (any depth), read
    as the tap of the full path; written back as written; a path no stage has is KD401."""
    t = build_model("lm_small", 259, 16, width=16, layers=3, heads=2).double()
    s = build_model("lm_tiny", 259, 16, width=16, layers=2, heads=2).double()
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    text = """method sub {
  teacher t
  student s
  transfer q:
      from t.stage[2..3]."attention.self.query"
      to s.stage[..]."attention.self.query"
      with mse
}"""
    low = spec(text)
    assert tap_text(low.method.terms[0].source) == 't.stage[2..3]."attention.self.query"'
    got = compile_spec(low, {"t": t, "s": s}, x).raw_terms(x)["q"]
    seen: dict[str, torch.Tensor] = {}
    for name, model in (("t", t), ("s", s)):
        for i, block in enumerate(model.blocks):
            block.attention.self.query.register_forward_hook(
                lambda m, a, out, k=f"{name}{i}": seen.__setitem__(k, out)
            )
        model(**x)
    want = F.mse_loss(seen["s0"], seen["t1"]) + F.mse_loss(seen["s1"], seen["t2"])
    assert_close(got, want)
    bad = text.replace('to s.stage[..]."attention.self.query"', 'to s.stage[-1]."attn.q"')
    assert bad != text
    with pytest.raises(KdError) as info:
        compile_spec(spec(bad), {"t": t, "s": s}, x)
    assert info.value.diagnostics[0].code == "KD401"
    assert "blocks.1.attn.q" in info.value.diagnostics[0].message


def test_missing_model_is_kd408():
    with pytest.raises(KdError) as info:
        compile_spec(spec(HINTON), {"s": build_model("mlp", 10, 1)}, batch())
    assert info.value.diagnostics[0].code == "KD408"


def test_shape_no_adapter_can_fix_points_at_the_spec_line():
    text = """method fsp {
  teacher t
  student s
  transfer fsp: fsp(t.stage[1], t.stage[2]) to fsp(s.stage[1], s.stage[2]) with mse
}""".replace("fsp: fsp(t", "fsp: from fsp(t")
    t, s = build_model("resnet8", 10, 1), build_model("cnn_small", 10, 1)
    with pytest.raises(KdError) as info:
        compile_spec(spec(text), {"t": t, "s": s}, batch())
    d = info.value.diagnostics[0]
    assert d.code == "KD403"
    assert d.source.line_col(d.span.start)[0] == 4


# -- losses equal hand-written computations --------------------------------------------------


def test_hinton_total_equals_hand_written_loss_float64():
    # float64: the test is about the formula; in float32 the KL sum loses digits to
    # cancellation, differently on each CPU
    t, s = build_model("resnet8", 10, 1).double(), build_model("cnn_tiny", 10, 1).double()
    x, y, i = batch()
    x = x.double()
    d = compile_spec(spec(HINTON), {"t": t, "s": s}, (x, y, i))
    out = d((x, y, i))
    t.eval()
    with torch.no_grad():
        zt = t(x)
    zs = s(x)
    kl = F.kl_div(F.log_softmax(zs / 4, 1), F.softmax(zt / 4, 1), reduction="batchmean")
    expected = 0.9 * 16 * kl + 0.1 * F.cross_entropy(zs, y)
    assert out.loss.dtype == torch.float64
    assert_close(out.loss, expected)
    assert_close(out.terms["kd"], 0.9 * 16 * kl)


def functional(text: str, tensors: dict, labels=None):
    low = spec(text)
    d = compile_spec(low, None, {**tensors, "labels": labels})
    return d.evaluate_terms(tensors, labels)


def test_attention_transfer_equals_formula_float64():
    g = torch.Generator().manual_seed(1)
    ft = [torch.randn(4, c, h, h, generator=g, dtype=torch.float64) for c, h in [(8, 8), (16, 4)]]
    fs = [torch.randn(4, c, h, h, generator=g, dtype=torch.float64) for c, h in [(4, 8), (8, 4)]]
    text = """method at {
  teacher t
  student s
  transfer at: attention(p=2) from t.stage[1..2] to s.stage[1..2] with mse
}"""
    got = functional(text, {"t.stage[1..2]": ft, "s.stage[1..2]": fs})["at"]

    def at(f):
        return F.normalize(f.pow(2).mean(1).flatten(1))

    expected = sum(((at(a) - at(b)) ** 2).mean() for a, b in zip(ft, fs, strict=True))
    assert_close(got, expected)


def test_rkd_distance_equals_formula_float64():
    g = torch.Generator().manual_seed(2)
    et = torch.randn(6, 5, generator=g, dtype=torch.float64)
    es = torch.randn(6, 3, generator=g, dtype=torch.float64)
    text = """method rkd {
  teacher t
  student s
  transfer d: distances from t.embedding to s.embedding with smooth_l1
}"""
    got = functional(text, {"t.embedding": et, "s.embedding": es})["d"]

    def dist(e):
        m = torch.cdist(e, e)
        return m / m[m > 0].mean()

    assert_close(got, F.smooth_l1_loss(dist(es), dist(et)))


def test_multi_teacher_mean_of_probabilities_float64():
    g = torch.Generator().manual_seed(3)
    z = [torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    text = """method mt {
  teacher a, b
  ensemble both = mean(a, b)
  student s
  transfer kd: softmax(T=2) from both.logits to s.logits with kl
}"""
    got = functional(text, {"a.logits": z[0], "b.logits": z[1], "s.logits": z[2]})["kd"]
    p = (F.softmax(z[0] / 2, 1) + F.softmax(z[1] / 2, 1)) / 2
    expected = (p * (p.log() - F.log_softmax(z[2] / 2, 1))).sum() / 4
    assert_close(got, expected)


def test_mse_on_distributions_compares_probabilities_and_subset_masks_rows():
    g = torch.Generator().manual_seed(4)
    zt, zs = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    text = """method mt {
  teacher t
  student s
  subset no_one = exclude_classes(1)
  transfer c: softmax from t.logits to s.logits with mse on no_one
}"""
    got = functional(text, {"t.logits": zt, "s.logits": zs}, labels)["c"]
    keep = labels != 1
    expected = F.mse_loss(F.softmax(zs[keep], 1), F.softmax(zt[keep], 1))
    assert_close(got, expected)


def test_uniform_mapping_pairs_student_layers_with_spaced_teacher_layers():
    t = [torch.full((2, 3), float(k), dtype=torch.float64) for k in range(6)]
    s = [torch.zeros(2, 3, dtype=torch.float64) for _ in range(3)]
    text = """method m {
  teacher t
  student s
  transfer h: from t.stage[1..6] to s.stage[1..3] map uniform with mse
}"""
    got = functional(text, {"t.stage[1..6]": t, "s.stage[1..3]": s})["h"]
    # student layer i (0-based) takes teacher layer 2i+1: values 1, 3, 5 -> squares summed
    assert float(got) == pytest.approx(1 + 9 + 25)


# -- gradients, stages, EMA, handoffs ---------------------------------------------------------


DML = """method dml {
  peer p1, p2
  transfer a: softmax from stopgrad(p2.logits) to p1.logits with kl
  supervise c1: p1.logits with cross_entropy
  supervise c2: p2.logits with cross_entropy
}"""


def test_stopgrad_stops_gradient_exactly_where_the_spec_says():
    p1, p2 = build_model("mlp", 10, 1), build_model("mlp", 10, 1)
    d = compile_spec(spec(DML), {"p1": p1, "p2": p2}, batch())
    d.set_stage("main")
    d(batch()).grad_terms["a"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in p2.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in p1.parameters())
    d.zero_grad()
    open_text = DML.replace("stopgrad(p2.logits)", "p2.logits")
    d2 = compile_spec(spec(open_text), {"p1": p1, "p2": p2}, batch())
    d2.set_stage("main")
    d2(batch()).grad_terms["a"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in p2.parameters())


def test_frozen_teacher_gets_no_gradient_and_keeps_its_mode():
    t, s = build_model("resnet8", 10, 1), build_model("cnn_tiny", 10, 1)
    t.train()
    d = compile_spec(spec(HINTON), {"t": t, "s": s}, batch())
    d.set_stage("main")
    d(batch()).loss.backward()
    assert all(p.grad is None for p in t.parameters())
    assert t.training  # restored after running in eval mode
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in s.parameters()}


FITNETS = """method fitnets {
  teacher t
  student s
  transfer hint: from t.stage[2] to regressor(s.stage[2]) with mse weight 100
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  stage hints for 25% {
    train s.stage[..2], hint
    losses hint
  }
  stage distill {
    losses kd
  }
}"""


def test_stage_switching_changes_terms_and_trainable_sets():
    t, s = build_model("resnet8", 10, 1), build_model("resnet8", 10, 1)
    d = compile_spec(spec(FITNETS), {"t": t, "s": s}, batch())
    assert [(p.name, p.duration, p.unit) for p in d.stage_plans] == [
        ("hints", 0.25, "fraction"),
        ("distill", None, None),
    ]
    d.set_stage("hints")
    out = d(batch())
    assert set(out.terms) == {"hint"}
    out.loss.backward()
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) not in trainable and p.grad is None for p in s.layer3.parameters())
    assert all(id(p) not in trainable for p in s.fc.parameters())
    assert all(id(p) in trainable for p in s.layer2.parameters())
    regressor = [p for n, p in d.named_parameters() if "adapters" in n]
    assert regressor and all(id(p) in trainable for p in regressor)
    # the regressor maps the student's stage 2 to the teacher's shape
    d.zero_grad()
    d.set_stage("distill")
    out = d(batch())
    assert set(out.terms) == {"kd"}
    assert all(p.requires_grad for p in s.parameters())
    assert not any(p.requires_grad for p in regressor)


def test_ema_role_moves_towards_its_source_after_each_step():
    text = """method mt {
  student s
  teacher m = ema(s, decay=0.9)
  transfer c: softmax from m.logits to s.logits with mse
  supervise ce: s.logits with cross_entropy
}"""
    s = build_model("mlp", 10, 1)
    d = compile_spec(spec(text), {"s": s}, batch())
    m = d.roles["m"]
    before = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    d.after_step()
    for b, pe, ps in zip(before, m.parameters(), s.parameters(), strict=True):
        assert_close(pe, 0.9 * b + 0.1 * ps)
    assert all(not p.requires_grad for p in m.parameters())


def test_handoff_copies_the_student_into_the_teacher_and_resets_it():
    text = """method ban {
  teacher t
  student s
  transfer kd: softmax from t.logits to s.logits with kl
  stage generation repeat 2 {
    losses kd
    handoff s -> t
  }
}"""
    t, s = build_model("mlp", 10, 1), build_model("mlp", 10, 1)
    d = compile_spec(spec(text), {"t": t, "s": s}, batch())
    assert d.stage_plans[0].repeat == 2
    d.set_stage("generation")
    trained = {k: v.clone() for k, v in s.state_dict().items()}
    d.finish_repeat()
    for k, v in t.state_dict().items():
        assert_close(v, trained[k])
    assert not torch.equal(s.fc.weight, trained["fc.weight"])
    final = {k: v.clone() for k, v in s.state_dict().items()}
    d.finish_repeat(last=True)  # the last generation stays the trained student
    assert all(torch.equal(v, final[k]) for k, v in s.state_dict().items())


def test_virtual_teacher_needs_no_model():
    text = """method tfkd {
  teacher v = virtual(correct=0.9)
  student s
  transfer kd: softmax(T=2) from v.logits to s.logits with kl
}"""
    x, y, i = batch()
    d = compile_spec(spec(text), {"s": build_model("mlp", 10, 1)}, (x, y, i))
    out = d((x, y, i))
    assert torch.isfinite(out.loss)
    assert "v" not in d.roles


def test_views_run_each_role_on_its_own_view():
    text = """method cs {
  student s
  view pair = same_class
  transfer self: softmax(T=4) from stopgrad(s[pair].logits) to s.logits with kl
  supervise ce: s.logits with cross_entropy
}"""
    from kdspec.data import synthetic_splits

    splits = synthetic_splits(n=40, num_classes=4, input_shape=(1, 8, 8))
    x = torch.stack([splits.train[k][0] for k in range(8)])
    y = torch.tensor([int(splits.train[k][1]) for k in range(8)])
    s = build_model("mlp", 4, 1)
    d = compile_spec(spec(text), {"s": s}, (x, y), train_data=splits.train)
    out = d((x, y))
    assert out.terms["self"] > 0  # another sample of the class, so the outputs differ


def test_hugging_face_outputs_are_selected_by_field_and_index():
    transformers = pytest.importorskip("transformers")
    cfg = dict(
        vocab_size=50, num_attention_heads=2, max_position_embeddings=16, output_hidden_states=True
    )
    t = transformers.BertModel(
        transformers.BertConfig(hidden_size=16, num_hidden_layers=4, intermediate_size=32, **cfg)
    )
    s = transformers.BertModel(
        transformers.BertConfig(hidden_size=8, num_hidden_layers=2, intermediate_size=16, **cfg)
    )
    text = """method tiny {
  teacher t
  student s
  transfer hidden: from t.output.hidden_states[-1] to linear(s.output.hidden_states[-1]) with mse
  transfer layers: from t.stage[1..4] to linear(s.stage[1..2]) map uniform with mse
}"""
    ids = torch.randint(0, 50, (2, 7))
    t(ids), s(ids)  # transformers installs its own output-recording hooks on a first call
    before = {
        id(m): (len(m._forward_hooks), len(m._forward_pre_hooks))
        for model in (t, s)
        for m in model.modules()
    }  # transformers adds its own hooks
    d = compile_spec(spec(text), {"t": t, "s": s}, (ids,))
    d.set_stage("main")
    out = d((ids,))
    out.loss.backward()
    assert set(out.terms) == {"hidden", "layers"}
    # every student layer and both adapters learn (the unused pooler does not)
    assert all(p.grad is not None for n, p in s.named_parameters() if "encoder" in n)
    assert all(p.grad is not None for n, p in d.named_parameters() if "adapters" in n)
    assert all(p.grad is None for p in t.parameters())
    after = {
        id(m): (len(m._forward_hooks), len(m._forward_pre_hooks))
        for model in (t, s)
        for m in model.modules()
    }
    assert after == before


def test_schedules_change_the_weight_with_progress():
    text = HINTON.replace("weight alpha * T^2", "weight alpha * T^2 * warmup(epochs=10)")
    d = compile_spec(
        spec(text), {"t": build_model("mlp", 10, 1), "s": build_model("mlp", 10, 1)}, batch()
    )
    assert d.weight("kd", Progress(epoch=5, stage_epochs=20)) == pytest.approx(0.9 * 16 * 0.5)
    assert d.weight("kd", Progress(epoch=15, stage_epochs=20)) == pytest.approx(0.9 * 16)


def test_ensemble_under_stopgrad_still_averages_probabilities():
    g = torch.Generator().manual_seed(5)
    z = [torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    text = """method mt {
  teacher a, b
  ensemble both = mean(a, b)
  student s
  transfer kd: softmax(T=2) from stopgrad(both.logits) to s.logits with kl
}"""
    got = functional(text, {"a.logits": z[0], "b.logits": z[1], "s.logits": z[2]})["kd"]
    p = (F.softmax(z[0] / 2, 1) + F.softmax(z[1] / 2, 1)) / 2
    expected = (p * (p.log() - F.log_softmax(z[2] / 2, 1))).sum() / 4
    assert_close(got, expected)


class _TorchvisionStyleBlock(nn.Module):
    """As torchvision's BasicBlock: one in-place ReLU used twice, an in-place residual add."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class _TorchvisionStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(_TorchvisionStyleBlock(8, 8, 1))
        self.layer2 = nn.Sequential(
            _TorchvisionStyleBlock(8, 16, 2), _TorchvisionStyleBlock(16, 16, 1)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_preactivation_of_a_block_reusing_an_inplace_relu():
    net = _TorchvisionStyleNet().eval()
    taps = discover(net, torch.randn(2, 1, 8, 8))
    assert taps.stages == ["layer1", "layer2"]
    text = """method ofd_like {
  teacher t
  student s
  transfer from t.stage[2].preact to s.stage[2].preact with mse
}"""
    student = _TorchvisionStyleNet()
    x, y, i = batch()
    d = compile_spec(spec(text), {"t": net, "s": student}, (x, y, i))
    seen = {}

    def grab(module, args, output):  # the block's add, recomputed by hand
        seen["pre"] = (
            module.bn2(module.conv2(module.relu(module.bn1(module.conv1(args[0]))))) + args[0]
        )

    handle = net.layer2[1].register_forward_hook(grab)
    with torch.no_grad():
        net(x)
    handle.remove()
    values = {}
    from kdspec.compiler.hooks import TapSession, resolve_tap
    from kdspec.ir import models as ir

    points = resolve_tap(ir.Tap(role="t", point="stage", first=2, last=2, io="preact"), taps, net)
    assert points[0].path == "layer2.1.relu" and points[0].call == 1
    with TapSession(net, points) as session, torch.no_grad():
        session.run(x)
        values["pre"] = session.get(points[0])
    assert_close(values["pre"], seen["pre"])
    assert (values["pre"] < 0).any()  # really before the ReLU, not overwritten by it
    assert no_hooks(net, student)
    assert torch.isfinite(d((x, y, i)).loss)


def test_a_def_argument_is_computed_once_however_often_the_body_reads_it():
    """`twice(linear(x))` with `def twice(x) = x + x`: one adapter (not one per read), so the
    value is 2 * linear(x); a random draw read twice is one draw (`x - x` is 0)."""
    from kdspec.compiler.nodes import AdapterNode

    text = """
def twice(x) = x + x
def gap(x) = x - x
method m {
  teacher t
  student s
  transfer v: from t.embedding to twice(linear(s.embedding)) with mse
  transfer r: from stopgrad(s.embedding) to gap(random(s.embedding)) with mse
}
"""
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)
    d = compile_spec(spec(text), None, {"t.embedding": t, "s.embedding": s})
    linear = [n for n in d.terms["v"].modules() if isinstance(n, AdapterNode)]
    assert len({id(n) for n in linear}) == 1
    (layer,) = linear[0].adapters
    out = d({"t.embedding": t, "s.embedding": s})
    assert_close(out.terms["v"], F.mse_loss(2 * layer(s), t))
    assert_close(out.terms["r"], s.pow(2).mean())
