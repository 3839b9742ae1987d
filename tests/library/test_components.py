"""The method components of :mod:`kdspec.ops.components`, one by one."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.diagnostics import KdError
from kdspec.ops import components as comp
from kdspec.ops.adapters import AdapterShapeError
from kdspec.vocabulary import FUNCTIONS

CTX = comp.BuildContext(num_classes=10, num_samples=64)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- registration -------------------------------------------------------------------------------


def test_every_component_is_in_the_vocabulary() -> None:
    for name in comp.COMPONENTS:
        assert FUNCTIONS[name].category == "adapter" and FUNCTIONS[name].learned, name
    for name in comp.LEARNED_LOSSES:
        assert FUNCTIONS[name].category == "loss" and FUNCTIONS[name].learned, name
    for name in comp.TRANSFORMS:
        assert FUNCTIONS[name].category == "transform" and not FUNCTIONS[name].learned, name


# --- token transforms ---------------------------------------------------------------------------


def test_token_and_rows() -> None:
    from language_values import value

    x = rand(2, 5, 4)
    assert torch.equal(value("token(s.stage[1])", {"s.stage[1]": x}), x[:, 0])
    assert torch.equal(value("token(s.stage[1], index=3)", {"s.stage[1]": x}), x[:, 3])
    assert comp.rows(x).shape == (10, 4)
    with pytest.raises(KdError, match="over=token"):  # a vector has no tokens
        value("token(s.embedding)", {"s.embedding": rand(2, 4)})


def test_attention_scores_and_relation_per_head() -> None:
    from language_values import value

    q, k = rand(2, 5, 6, seed=1), rand(2, 5, 6, seed=2)
    taps = {"s.stage[1]": q, "s.stage[2]": k}
    s = value("attention_scores(s.stage[1], s.stage[2], heads=3)", taps)
    assert s.shape == (2, 3, 5, 5)
    # head 1 uses features 2..3, scaled by 1/sqrt(2)
    expected = q[:, :, 2:4] @ k[:, :, 2:4].transpose(1, 2) / math.sqrt(2)
    assert_close(s[:, 1], expected)
    rel = value("token_relation(s.stage[1], s.stage[2], heads=3)", taps)
    assert rel.shape == (2 * 3 * 5, 5)
    assert_close(rel.exp().sum(-1), torch.ones(30))
    assert_close(rel.view(2, 3, 5, 5)[:, 1], torch.log_softmax(expected, -1))
    with pytest.raises(KdError, match="do not split into 3 heads"):
        value("attention_scores(s.stage[1], s.stage[2], heads=3)", {
            "s.stage[1]": rand(2, 5, 7), "s.stage[2]": rand(2, 5, 7)})  # fmt: skip


# --- list components ----------------------------------------------------------------------------


def test_abf_fuses_top_down_and_reaches_teacher_shapes() -> None:
    xs = [rand(2, 4, 8, 8, seed=1), rand(2, 8, 4, 4, seed=2)]
    hint = [(6, 8, 8), (12, 2, 2)]
    m = comp.build_component("abf", [xs], hint, CTX, mid=5).eval()
    outs = m(xs)
    assert [tuple(o.shape[1:]) for o in outs] == hint
    deep, shallow = m.abfs[1], m.abfs[0]
    assert deep.att_conv is None and shallow.att_conv is not None
    # the deepest level: conv1, resize (nearest) to the teacher's 2x2, conv2
    res = F.interpolate(deep.conv1(xs[1]), (2, 2), mode="nearest")
    assert_close(outs[1], deep.conv2(res))
    # the shallow level fuses its own feature with the upsampled residual through attention
    x = shallow.conv1(xs[0])
    y = F.interpolate(res, (8, 8), mode="nearest")
    z = shallow.att_conv(torch.cat([x, y], 1))
    assert_close(outs[0], shallow.conv2(x * z[:, :1] + y * z[:, 1:]))


def test_abf_mid_channels_default_to_the_deepest_student_width() -> None:
    xs = [rand(2, 4, 8, 8), rand(2, 8, 4, 4)]
    m = comp.build_component("abf", [xs], [(6, 8, 8), (12, 4, 4)], CTX)
    assert m.abfs[0].conv1[0].out_channels == 8


def test_factor_transfer_components() -> None:
    t = rand(2, 16, 4, 4)
    para = comp.build_component("paraphraser", [[t]], None, CTX, rate=0.5)
    (factor,) = para([t])
    assert factor.shape == (2, 8, 4, 4)
    dec = comp.build_component("paraphraser_decoder", [[factor]], [(16, 4, 4)], CTX)
    assert dec([factor])[0].shape == t.shape
    s = rand(2, 6, 8, 8)  # wider map: pooled to the factor's size
    trans = comp.build_component("translator", [[s]], [(8, 4, 4)], CTX)
    assert trans([s])[0].shape == (2, 8, 4, 4)
    with pytest.raises(AdapterShapeError, match="no factor channels"):
        comp.build_component("paraphraser", [[rand(2, 1, 4, 4)]], None, CTX, rate=0.5)


def test_branches_and_gate_form_the_gated_ensemble() -> None:
    x = rand(4, 8, 4, 4)
    branches = comp.build_component("branches", [[x]], None, CTX, n=2, width=6).eval()
    zs = branches([x])
    assert len(zs) == 2 and all(z.shape == (4, 10) for z in zs)
    z0 = rand(4, 10, seed=3)
    gate = comp.build_component("gate", [[x], [z0], zs], None, CTX).eval()
    (ens,) = gate([x], [z0], zs)
    g = gate.gate.weights(x)
    assert_close(g.sum(1), torch.ones(4))
    expected = g[:, :1] * z0 + g[:, 1:2] * zs[0] + g[:, 2:] * zs[1]
    assert_close(ens, expected)
    with pytest.raises(AdapterShapeError, match="number of classes"):
        comp.build_component("branches", [[x]], None, comp.BuildContext(), n=2)


def test_generator_keeps_size_and_maps_to_teacher_channels() -> None:
    s = rand(2, 8, 4, 4)
    gen = comp.build_component("generator", [[s]], [(16, 4, 4)], CTX)
    assert gen([s])[0].shape == (2, 16, 4, 4)
    with pytest.raises(AdapterShapeError, match="spatial sizes differ"):
        comp.build_component("generator", [[s]], [(16, 2, 2)], CTX)


# --- learned losses -----------------------------------------------------------------------------


def _crd(k: int = 5) -> comp.CRDLoss:
    t, s = F.normalize(rand(4, 6, seed=1), dim=1), F.normalize(rand(4, 6, seed=2), dim=1)
    return comp.build_learned_loss("crd_nce", [t], [s], CTX, k=k)  # type: ignore[return-value]


def test_crd_memory_moves_only_in_training_and_only_for_the_batch() -> None:
    crd = _crd()
    assert crd.memory_s.shape == (64, 6) and crd.memory_t.shape == (64, 6)
    t, s = F.normalize(rand(4, 6, seed=3), dim=1), F.normalize(rand(4, 6, seed=4), dim=1)
    env = SimpleNamespace(index=torch.tensor([1, 5, 9, 60]))
    before = crd.memory_s.clone(), crd.memory_t.clone(), crd.z.clone()
    crd.eval()
    loss = crd([t], [s], env)
    assert torch.isfinite(loss)
    assert all(
        torch.equal(a, b) for a, b in zip(before, (crd.memory_s, crd.memory_t, crd.z), strict=True)
    )
    crd.train()
    crd([t], [s], env)
    moved = (crd.memory_s != before[0]).any(1)
    assert moved.nonzero().flatten().tolist() == [1, 5, 9, 60]
    assert_close(crd.memory_s[env.index].norm(dim=1), torch.ones(4))
    assert (crd.z > 0).all()


@pytest.mark.parametrize("k", [5, 40])
def test_crd_scoring_every_row_equals_gathering_rows(k: int) -> None:
    """Both scoring paths (one product over the bank, or gathered rows) give the same loss,
    gradients and memory over two training steps, in float64."""
    runs = []
    for every_row in (True, False):
        torch.manual_seed(0)
        crd = _crd(k=k).double().train()
        crd._scores_every_row = lambda idx, every_row=every_row: every_row  # type: ignore[method-assign]
        trace = []
        for step in range(2):
            t = F.normalize(rand(4, 6, seed=3 + step), dim=1).double().requires_grad_()
            s = F.normalize(rand(4, 6, seed=5 + step), dim=1).double().requires_grad_()
            loss = crd([t], [s], SimpleNamespace(index=torch.tensor([1, 5, 9, 60])))
            loss.backward()
            trace += [loss.detach(), t.grad, s.grad, crd.memory_s.clone(), crd.memory_t.clone()]
        runs.append(trace)
    for a, b in zip(*runs, strict=True):
        assert_close(a, b, rtol=1e-12)


def test_crd_negatives_put_the_positive_first_and_need_indices() -> None:
    crd = _crd(k=7)
    idx = crd.sample_negatives(torch.tensor([3, 4]))
    assert idx.shape == (2, 8) and idx[:, 0].tolist() == [3, 4]
    with pytest.raises(ValueError, match="sample indices"):
        crd([rand(2, 6)], [rand(2, 6)], SimpleNamespace(index=None))
    with pytest.raises(AdapterShapeError, match="num_samples"):
        comp.build_learned_loss("crd_nce", [rand(2, 6)], [rand(2, 6)], comp.BuildContext())
    with pytest.raises(AdapterShapeError, match="embedding sizes differ"):
        comp.build_learned_loss("crd_nce", [rand(2, 6)], [rand(2, 5)], CTX)


def test_semckd_attention_over_teacher_layers_and_fixed_batch() -> None:
    ts = [rand(8, 4, 4, 4, seed=1), rand(8, 6, 2, 2, seed=2), rand(8, 6, 1, 1, seed=3)]
    ss = [rand(8, 3, 4, 4, seed=4), rand(8, 5, 2, 2, seed=5)]
    loss = comp.build_learned_loss("semckd", ts, ss, CTX)
    att = loss.attention(ts, ss)
    assert att.shape == (8, 2, 3)
    assert_close(att.sum(-1), torch.ones(8, 2))
    value = loss(ts, ss)
    value.backward()
    assert all(p.grad is not None for p in loss.parameters())
    # a smaller last batch is padded; a larger one than the loss was built for is an error
    assert torch.isfinite(loss([t[:4] for t in ts], [s[:4] for s in ss]))
    with pytest.raises(ValueError, match="at most 8"):
        loss([torch.cat([t, t]) for t in ts], [torch.cat([s, s]) for s in ss])
