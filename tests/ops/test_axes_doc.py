"""docs/language.md "Which axis each function uses": every row checked on tensors."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from language_values import value
from tolerance import assert_close
from torch import Tensor

from kdspec.ops import transforms as tf

DOC = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text(encoding="utf-8")


def rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: Tensor, b: Tensor) -> None:
    assert_close(a, b, rtol=1e-12)


def test_the_axes_table_covers_every_shape_changing_transform() -> None:
    section = DOC.split("#### Which axis each function uses", 1)[1].split("\n\n", 3)[2]
    documented = set(
        re.findall(r"`([a-z_]+)`", "".join(re.findall(r"^\| ([^|]+) \|", section, re.M)))
    )
    expected = {"softmax", "log_softmax", "zscore", "binary_target", "non_target", "normalize",
                "attention", "similarity", "pkt_affinity", "distances", "angles", "gram", "fsp",
                "channel_dist", "pool", "flatten"}  # fmt: skip
    assert expected <= documented, expected - documented


def test_normalize_is_per_sample_for_maps_and_vectors_and_per_row_for_3d() -> None:
    x4 = rand(3, 2, 4, 4)
    close(tf.normalize(x4), x4.flatten(1) / x4.flatten(1).norm(dim=1, keepdim=True))
    x2 = rand(3, 5)
    close(tf.normalize(x2).norm(dim=1), torch.ones(3, dtype=torch.float64))
    x3 = rand(3, 4, 5)
    out = tf.normalize(x3)
    assert out.shape == x3.shape
    close(out.norm(dim=-1), torch.ones(3, 4, dtype=torch.float64))  # each row, not each sample


def test_similarity_normalises_the_rows_of_x_xt_and_is_not_the_cosine() -> None:
    x = rand(4, 3, 2, 2)
    f = x.flatten(1)
    g = f @ f.T
    sim = value("similarity(s.stage[1])", {"s.stage[1]": x})
    close(sim, g / g.norm(dim=1, keepdim=True))
    close(value("similarity(s.stage[1], p=1)", {"s.stage[1]": x}), g / g.abs().sum(1, keepdim=True))
    cosine = F.normalize(f, dim=1) @ F.normalize(f, dim=1).T
    assert (sim - cosine).abs().max() > 1e-3


def test_attention_reduces_channels_then_normalises_each_sample() -> None:
    x = rand(3, 4, 2, 2)
    a = x.pow(2).mean(dim=1).flatten(1)
    close(
        value("attention(s.stage[1])", {"s.stage[1]": x}).flatten(1),
        a / a.norm(dim=1, keepdim=True),
    )


def test_gram_fsp_channel_dist_pool_and_flatten_axes() -> None:
    x = rand(2, 3, 4, 4)
    f = x.flatten(2)
    close(value("gram(s.stage[1])", {"s.stage[1]": x}), f @ f.transpose(1, 2) / 16)
    y = rand(2, 5, 4, 4, seed=1)
    got = value("fsp(s.stage[1], s.stage[2])", {"s.stage[1]": x, "s.stage[2]": y})
    close(got, f @ y.flatten(2).transpose(1, 2) / 16)
    cd = value("channel_dist(s.stage[1])", {"s.stage[1]": x}).flatten(2)
    close(cd, f / f.norm(dim=2, keepdim=True))
    close(tf.pool(x), x.mean(dim=(2, 3)))
    close(tf.pool(rand(2, 5, 6)), rand(2, 5, 6).mean(dim=1))
    assert value("flatten(s.stage[1])", {"s.stage[1]": x}).shape == (2, 48)


def test_class_axis_functions_use_the_last_axis() -> None:
    z = rand(2, 3, 7)
    close(tf.softmax(z).exp().sum(-1), torch.ones(2, 3, dtype=torch.float64))
    out = value("zscore(rows(s.logits))", {"s.logits": z}).reshape(2, 3, 7)
    assert_close(out.mean(-1), torch.zeros(2, 3, dtype=torch.float64), scale=1.0)
    close(out.std(-1), torch.ones(2, 3, dtype=torch.float64) * (z.std(-1) / (z.std(-1) + 1e-7)))
    y = torch.tensor([1, 4])
    two = value("binary_target(s.logits)", {"s.logits": z[:, 0]}, y)
    close(two.exp().sum(-1), torch.ones(2, dtype=torch.float64))
