"""The LM losses of ``specs/`` per token with padding and prompt tokens in the batch (float64).

Token data carry masks (:mod:`kdspec.compiler.sequence`): the per-token specs read
``rows(t.logits)``, which keeps the tokens of the batch's labels mask only, so padding and
prompt positions count neither in the sum nor in the normaliser. Each spec's loss and gradients
must match an independent per-token PyTorch reference to 1e-6: TRL's
``GKDTrainer.generalized_jsd_loss`` (transcribed in ``test_paper_refs``; TRL is not a
dependency), torchtune's ``ForwardKLLoss``, DistiLLM's losses (``paper_refs``).
"""

from __future__ import annotations

from typing import Any

import paper_refs as ref
import pytest
import torch
import torch.nn.functional as F
from test_paper_refs import official_gjsd as trl_generalized_jsd_loss
from test_paper_specs import same, spec_loss
from tolerance import assert_close
from torch import Tensor

B, L, V = 4, 7, 11


def token_batch(seed: int) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Teacher and student logits [B, L, V], labels with -100 at padding and prompt tokens."""
    g = torch.Generator().manual_seed(seed)
    t = (2 * torch.randn(B, L, V, generator=g, dtype=torch.float64)).requires_grad_(True)
    s = (2 * torch.randn(B, L, V, generator=g, dtype=torch.float64)).requires_grad_(True)
    lengths = torch.tensor([7, 5, 3, 6])  # right padding after these
    prompt = torch.tensor([2, 0, 1, 3])  # no loss on the first tokens
    pos = torch.arange(L)
    attention = (pos < lengths[:, None]).long()
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[(pos >= lengths[:, None]) | (pos < prompt[:, None])] = -100
    batch = {"t.logits": t, "s.logits": s, "labels": labels, "attention_mask": attention}
    return t, s, labels, batch


def torchtune_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> Tensor:
    """torchtune's ``ForwardKLLoss`` (torchtune/modules/loss/kd_losses.py), transcribed."""
    teacher_prob = F.softmax(teacher_logits, dim=-1, dtype=torch.float64)
    inf_mask = torch.isinf(student_logits)
    student_logprob = F.log_softmax(student_logits, dim=-1, dtype=torch.float64)
    prod_probs = torch.masked_fill(teacher_prob * student_logprob, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    mask = (labels != ignore_index).int()
    # torchtune returns the cross-entropy part; the teacher entropy makes it the KL.
    entropy = (teacher_prob * F.log_softmax(teacher_logits, dim=-1)).sum(-1).view(-1)
    return -torch.sum((x - entropy) * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


@pytest.mark.parametrize(
    ("beta", "T"), [(0.0, 1.0), (0.1, 1.0), (0.5, 2.0), (0.9, 1.0), (1.0, 2.0)]
)
def test_jsd_matches_trl_with_padding(beta: float, T: float) -> None:
    t, s, labels, batch = token_batch(1)
    loss, _ = spec_loss("jsd", batch, overrides={"beta": beta, "T": T})
    same(loss, trl_generalized_jsd_loss(s, t, labels, beta=beta, temperature=T), [s, t])


def test_forward_kl_matches_torchtune_with_padding() -> None:
    t, s, labels, batch = token_batch(2)
    loss, _ = spec_loss("forward_kl", batch)
    same(loss, torchtune_forward_kl(s, t, labels), [s, t])


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_reverse_kl_and_tvd_with_padding(T: float) -> None:
    t, s, labels, batch = token_batch(3)
    keep = labels != -100
    loss, _ = spec_loss("reverse_kl", batch, overrides={"T": T})
    same(loss, ref.reverse_kl(t, s, keep, T=T), [s, t])
    loss, _ = spec_loss("tvd", batch, overrides={"T": T})
    same(loss, ref.tvd(t, s, keep, T=T), [s, t])


@pytest.mark.parametrize(("alpha", "T"), [(0.1, 1.0), (0.5, 2.0)])
def test_skew_kls_with_padding(alpha: float, T: float) -> None:
    t, s, labels, batch = token_batch(4)
    keep = labels != -100
    loss, _ = spec_loss("skew_kl", batch, overrides={"alpha": alpha, "T": T})
    same(loss, ref.skew_kl(t, s, alpha, keep, T=T), [s, t])
    loss, _ = spec_loss("skew_reverse_kl", batch, overrides={"alpha": alpha, "T": T})
    same(loss, ref.skew_reverse_kl(t, s, alpha, keep, T=T), [s, t])


def test_padding_changes_nothing() -> None:
    """More padding after the same tokens leaves every LM loss as it was."""
    t, s, labels, batch = token_batch(5)
    pad = 3
    wide = {
        "t.logits": torch.cat([t, 100 * torch.randn(B, pad, V, dtype=torch.float64)], 1),
        "s.logits": torch.cat([s, -100 * torch.randn(B, pad, V, dtype=torch.float64)], 1),
        "labels": torch.cat([labels, torch.full((B, pad), -100)], 1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(B, pad).long()], 1),
    }
    for name in ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"):
        a, _ = spec_loss(name, batch)
        b, _ = spec_loss(name, wide)
        assert_close(a, b, rtol=1e-12, what=name)


def topk_reference(
    teacher: Tensor, student: Tensor, labels: Tensor, k: int, T: float, rest: bool
) -> Tensor:
    """Top-k KL from the teacher's top-k indices, by gathering (what stored sparse logits give):
    renormalised (softmax over the k gathered logits on both sides), or with a (k+1)-th bucket
    holding each side's remaining probability. Mean over the tokens whose label is kept."""
    idx = (teacher / T).topk(k, dim=-1).indices
    if rest:
        pt = F.softmax(teacher / T, -1).gather(-1, idx)
        ps = F.softmax(student / T, -1).gather(-1, idx)
        pt = torch.cat([pt, 1 - pt.sum(-1, keepdim=True)], -1)
        ps = torch.cat([ps, 1 - ps.sum(-1, keepdim=True)], -1)
        per_token = (pt * (pt.log() - ps.log())).sum(-1)
    else:
        log_pt = F.log_softmax(teacher.gather(-1, idx) / T, -1)
        log_ps = F.log_softmax(student.gather(-1, idx) / T, -1)
        per_token = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    keep = labels != -100
    return per_token[keep].sum() / keep.sum()


@pytest.mark.parametrize(("k", "T"), [(1, 1.0), (3, 1.0), (5, 2.0)])
@pytest.mark.parametrize("rest", [False, True])
def test_topk_teacher_distributions(k: int, T: float, rest: bool) -> None:
    t, s, labels, batch = token_batch(6)
    name = "topk_rest_kl" if rest else "topk_kl"
    loss, _ = spec_loss(name, batch, overrides={"k": k, "T": T})
    if not rest and k == 1:  # one token renormalised: nothing to learn
        assert float(loss) == pytest.approx(0.0, abs=1e-12)
        return
    same(loss, topk_reference(t, s, labels, k, T, rest), [s])


def test_axis_sets_over_token_values_leave_the_padding_out() -> None:
    """`sum(x, over=all)` / `mean(x, over=sample)` on token data: the masked positions count
    in neither the sum nor the mean."""
    _, s, _, batch = token_batch(7)
    text = """
method m {
  student s
  supervise a: s.logits with total
  supervise b: s.logits with per_sample weight 1 / B
}
def total(s) = sum(s, over=all) / B
def per_sample(s) = mean(s, over=sample)
"""
    from kdspec.api import load_method
    from kdspec.compiler import compile_spec

    d = compile_spec(load_method("m.kd", text=text), None, {k: v for k, v in batch.items()})
    got = d.raw_terms(batch)
    keep = batch["attention_mask"].bool()
    assert_close(got["a"], s[keep].sum() / B)
    per = (s * keep[..., None]).sum((1, 2)) / (keep.sum(1) * V)
    assert_close(got["b"], per.mean())
