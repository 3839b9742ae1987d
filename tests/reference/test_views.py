"""Views that remember their source sample (issue 9): ``k`` views per sample, ``same_source``,
``view_index`` and the view index as a class target, against a float64 reference.

A view with ``k`` views per sample lays them out view-major (view 0 of every sample, then view
1, ...). The reference below is plain torch: it builds the positives and the rotation targets
from that layout itself, never from kdspec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close
from torch import Tensor

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.compiler.nodes import AdapterNode
from kdspec.compiler.views import make_view
from kdspec.ir import models as ir
from kdspec.zoo import build_model

SPEC = Path(__file__).resolve().parent / "specs" / "view_contrast.kd"
B, K, D = 6, 10, 5


def rand(*shape: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def reference(
    t: Tensor, s: Tensor, rot_logits: Tensor, logits: Tensor, y: Tensor, tau: float = 0.1
) -> Tensor:
    """InfoNCE over views (positives: every view of the same sample), rotation prediction
    (target: the view index, 0.5 weight), cross-entropy with the sample's label per view."""
    n = s.shape[0]
    sample = torch.arange(n) % B
    sim = F.normalize(s, dim=1) @ F.normalize(t, dim=1).T / tau
    pos = (sample[:, None] == sample[None, :]).double()
    nce = (torch.logsumexp(sim, dim=1) - (pos * sim).sum(1) / pos.sum(1)).mean()
    rotation = F.cross_entropy(rot_logits, torch.arange(rot_logits.shape[0]) // B)
    ce = F.cross_entropy(logits, y[torch.arange(logits.shape[0]) % B])
    return nce + 0.5 * rotation + ce


def adapters(d: torch.nn.Module, term: str) -> list[torch.nn.Module]:
    return [a.adapters[0] for a in d.terms[term].modules() if isinstance(a, AdapterNode)]


def test_views_of_a_sample_as_positives_and_the_view_index_as_target() -> None:
    t, s = rand(2 * B, D, seed=1), rand(2 * B, D, seed=2)
    rot, logits = rand(4 * B, 7, seed=3), rand(2 * B, K, seed=4)
    y = torch.arange(B) % K
    batch = {"t.embedding": t, "s.embedding": s, "s[rot].embedding": rot, "s.logits": logits}
    example = {k: v.detach() for k, v in batch.items()}
    d = compile_spec(load_method(SPEC), None, {**example, "labels": y}, num_classes=K)
    loss = d({**batch, "labels": y}).loss
    (proj,) = adapters(d, "nce")  # the student's embedding mapped to the teacher's width
    (head,) = adapters(d, "rotation")
    paper = reference(t, proj(s), head(rot), logits, y)
    assert_close(loss, paper, what="loss")
    for x in (t, s, rot, logits):
        (a,) = torch.autograd.grad(loss, [x], retain_graph=True)
        (b,) = torch.autograd.grad(paper, [x], retain_graph=True)
        assert_close(a, b, what="gradient")


def _view(func: str, **kw: float) -> ir.DataPart:
    return ir.DataPart(
        name="v", kind="view", func=func, kwargs={k: ir.Num(value=v) for k, v in kw.items()}
    )


def test_rotations_are_view_major_quarter_turns() -> None:
    x = torch.arange(2 * 9, dtype=torch.float64).reshape(2, 1, 3, 3)
    out = make_view(_view("rotations", k=4), {}, None)(x, torch.zeros(2))
    assert out.shape == (8, 1, 3, 3)
    for i in range(4):  # view i of sample b is row i * B + b, turned i quarter turns
        assert torch.equal(out[2 * i : 2 * i + 2], torch.rot90(x, i, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        make_view(_view("rotations", k=2), {}, None)(torch.zeros(2, 1, 3, 4), torch.zeros(2))


def test_k_noisy_views_are_independent_draws_of_each_sample() -> None:
    x = torch.zeros(3, 4)
    out = make_view(_view("gaussian_noise", std=1.0, k=3), {}, None)(x, torch.zeros(3))
    assert out.shape == (9, 4)
    assert not torch.equal(out[:3], out[3:6])  # each view draws its own noise


def test_a_student_trains_on_views_of_real_images() -> None:
    torch.manual_seed(0)
    models = {r: build_model(a, num_classes=K, in_channels=1) for r, a in (("t", "cnn_small"),
              ("s", "resnet8"))}  # fmt: skip
    x, y = torch.randn(B, 1, 8, 8), torch.arange(B) % K
    d = compile_spec(load_method(SPEC), models, (x, y, torch.arange(B)), num_classes=K)
    d.set_stage("main")
    out = d((x, y, torch.arange(B)))
    assert set(out.terms) == {"nce", "rotation", "ce"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    head = [p for n, p in d.named_parameters() if "rotation" in n]
    assert head and all(p.grad is not None for p in head)
