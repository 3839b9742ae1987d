"""Adapters: shapes as promised, AdapterShapeError on impossible mappings, gradients flow."""

from __future__ import annotations

import math

import pytest
import torch
from tolerance import assert_close
from torch import nn

from kdspec.ops.adapters import (
    ADAPTERS,
    AdapterShapeError,
    ConvReg,
    VIDRegressor,
    build_adapter,
)

B = 2


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def run(module: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    return module(torch.randn(B, *in_shape))


def test_registry_names() -> None:
    assert set(ADAPTERS) == {
        "identity", "conv1x1", "conv_bn", "regressor", "linear", "mlp", "embed",
        "classifier_head", "vid_regressor",
    }  # fmt: skip
    assert issubclass(AdapterShapeError, ValueError)


# (name, in_shape, out_shape, params, expected output shape)
CASES = [
    ("identity", (4, 3, 3), (4, 3, 3), {}, (4, 3, 3)),
    ("identity", (7,), None, {}, (7,)),
    ("conv1x1", (4, 8, 8), (6, 8, 8), {}, (6, 8, 8)),
    ("conv1x1", (4, 8, 8), (6, 4, 4), {}, (6, 4, 4)),
    ("conv1x1", (4, 4, 4), (6, 8, 8), {"bias": False}, (6, 8, 8)),
    ("conv1x1", (4, 8, 8), (6, 4, 16), {}, (6, 4, 16)),
    ("conv_bn", (4, 8, 8), (6, 8, 8), {}, (6, 8, 8)),
    ("conv_bn", (4, 8, 8), (6, 2, 2), {}, (6, 2, 2)),
    ("regressor", (4, 8, 8), (6, 4, 4), {}, (6, 4, 4)),
    ("regressor", (4, 4, 4), (6, 8, 8), {}, (6, 8, 8)),
    ("regressor", (4, 8, 8), (6, 8, 8), {}, (6, 8, 8)),
    ("regressor", (4, 8, 7), (6, 5, 5), {"use_relu": False}, (6, 5, 5)),
    ("linear", (8,), (5,), {}, (5,)),
    ("linear", (6, 8), (6, 5), {}, (6, 5)),
    ("linear", (3, 2, 2), (5,), {}, (5,)),
    ("linear", (6, 8), (12,), {}, (12,)),
    ("linear", (8,), None, {"dim": 3}, (3,)),
    ("linear", (6, 8), None, {"dim": 3}, (6, 3)),
    ("linear", (3, 2, 2), None, {"dim": 3}, (3,)),
    ("linear", (8,), (5,), {"dim": 9}, (9,)),
    ("mlp", (8,), (5,), {}, (5,)),
    ("mlp", (6, 8), (6, 5), {"hidden": 16}, (6, 5)),
    ("mlp", (3, 2, 2), (5,), {}, (5,)),
    ("embed", (3, 2, 2), None, {}, (128,)),
    ("embed", (16,), (32,), {"dim": 32}, (32,)),
    ("embed", (16,), None, {"dim": 8}, (8,)),
    ("classifier_head", (4, 8, 8), None, {"num_classes": 10}, (10,)),
    ("classifier_head", (4, 8, 8), (10,), {"hidden": 16}, (10,)),
    ("classifier_head", (12,), (10,), {}, (10,)),
]


@pytest.mark.parametrize(("name", "src", "dst", "params", "want"), CASES)
def test_adapter_maps_shapes(
    name: str,
    src: tuple[int, ...],
    dst: tuple[int, ...] | None,
    params: dict[str, object],
    want: tuple[int, ...],
) -> None:
    module = build_adapter(name, src, dst, **params)
    out = run(module, src)
    assert out.shape == (B, *want)
    if name == "identity":
        return
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_regressor_branches_match_repdistiller_convreg() -> None:
    down = build_adapter("regressor", (4, 8, 8), (6, 4, 4))
    assert isinstance(down, ConvReg)
    conv = down.conv
    assert isinstance(conv, nn.Conv2d)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    up = build_adapter("regressor", (4, 4, 4), (6, 8, 8))
    assert isinstance(up, ConvReg)
    assert isinstance(up.conv, nn.ConvTranspose2d)
    assert up.conv.kernel_size == (4, 4)
    crop = build_adapter("regressor", (4, 8, 7), (6, 5, 5))
    assert isinstance(crop, ConvReg)
    assert isinstance(crop.conv, nn.Conv2d)
    assert crop.conv.kernel_size == (4, 3)
    # BN + ReLU by default: non-negative output.
    assert (run(crop, (4, 8, 7)) >= 0).all()


def test_embed_outputs_unit_vectors() -> None:
    out = run(build_adapter("embed", (3, 4, 4), None), (3, 4, 4))
    assert_close(out.norm(dim=1), torch.ones(B))


def test_conv_bn_resizes_then_projects() -> None:
    module = build_adapter("conv_bn", (4, 8, 8), (6, 4, 4)).eval()
    x = torch.randn(B, 4, 8, 8)
    conv, bn = module[1], module[2]
    pooled = x.reshape(B, 4, 4, 2, 4, 2).mean(dim=(3, 5))
    assert_close(module(x), bn(conv(pooled)))


def test_vid_regressor_returns_mean_and_variance() -> None:
    module = build_adapter("vid_regressor", (4, 8, 8), (6, 4, 4))
    assert isinstance(module, VIDRegressor)
    x = torch.randn(B, 4, 8, 8)
    mu, var = module(x)
    assert mu.shape == (B, 6, 4, 4)
    assert var.shape == (1, 6, 1, 1)
    assert_close(var, torch.full((1, 6, 1, 1), 5.0))
    convs = [m for m in module.regressor if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 6, 6]
    assert all(c.bias is None for c in convs)
    t = torch.randn(B, 6, 4, 4)
    mean, variance = module(x)
    loss = (0.5 * ((mean - t) ** 2 / variance + variance.log())).mean()  # gaussian_nll
    loss.backward()
    assert module.log_scale.grad is not None
    assert math.isfinite(loss.item())
    custom = build_adapter("vid_regressor", (4, 8, 8), (6, 8, 8), mid=3, init_pred_var=2.0)
    assert isinstance(custom, VIDRegressor)
    assert_close(custom(torch.randn(B, 4, 8, 8))[1], torch.full((1, 6, 1, 1), 2.0))


def test_adapters_run_in_float64() -> None:
    for name, src, dst, params, want in CASES:
        module = build_adapter(name, src, dst, **params).double()
        out = module(torch.randn(B, *src, dtype=torch.float64))
        assert out.dtype == torch.float64, name
        assert out.shape == (B, *want)


IMPOSSIBLE = [
    ("identity", (4, 3, 3), (4, 3, 4), {}),
    ("conv1x1", (8,), (4,), {}),
    ("conv1x1", (4, 8, 8), None, {}),
    ("conv_bn", (4, 8, 8), (6, 64), {}),
    ("regressor", (4, 4, 4), (6, 6, 6), {}),  # student smaller, not half
    ("regressor", (4, 8, 8), (6, 4, 5), {}),  # stride-2 branch gives width 4
    ("regressor", (4, 8, 4), (6, 6, 6), {}),  # width would need a negative kernel
    ("regressor", (4, 8, 8), None, {}),
    ("linear", (4, 8, 8), (6, 8, 8), {}),
    ("linear", (6, 8), (7, 5), {}),
    ("linear", (8,), None, {}),
    ("mlp", (4, 8, 8), (2, 3, 3), {}),
    ("embed", (16,), (4, 4), {}),
    ("embed", (16,), (32,), {"dim": 8}),
    ("classifier_head", (4, 8, 8), None, {}),
    ("classifier_head", (4, 8, 8), (10,), {"num_classes": 5}),
    ("classifier_head", (6, 8), (10,), {}),
    ("vid_regressor", (16,), (8,), {}),
    ("identity", (4, 0, 3), None, {}),
]


@pytest.mark.parametrize(("name", "src", "dst", "params"), IMPOSSIBLE)
def test_impossible_mappings_raise(
    name: str, src: tuple[int, ...], dst: tuple[int, ...] | None, params: dict[str, object]
) -> None:
    with pytest.raises(AdapterShapeError, match=f"adapter `{name}`"):
        build_adapter(name, src, dst, **params)


def test_error_message_names_shapes() -> None:
    with pytest.raises(AdapterShapeError) as info:
        build_adapter("regressor", (4, 4, 4), (6, 6, 6))
    assert "[4, 4, 4]" in str(info.value)
    assert "[6, 6, 6]" in str(info.value)


def test_unknown_name_and_unknown_param() -> None:
    with pytest.raises(ValueError, match="unknown adapter `conv9x9`") as info:
        build_adapter("conv9x9", (4, 8, 8), (4, 8, 8))
    assert not isinstance(info.value, AdapterShapeError)
    with pytest.raises(TypeError):
        build_adapter("conv1x1", (4, 8, 8), (4, 8, 8), widht=3)
