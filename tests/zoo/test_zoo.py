"""Tests for the model zoo: shapes, tap-point hints, hookability and literature sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdspec.zoo import ZOO_VERSION, available_models, build_model

ALL = [n for n in available_models() if not n.startswith("lm_")]  # image models (LMs: test_lm.py)
# Nets whose blocks end in a ReLU after the residual sum / concat.
RELU_OUT_NETS = [n for n in ALL if n.startswith(("resnet", "shufflenet"))]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_available_models_lists_the_benchmark_zoo() -> None:
    expected = {
        *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
        "resnet8x4",
        "resnet32x4",
        *("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"),
        *("vgg8", "vgg11", "vgg13"),
        *("mobilenetv2", "shufflenetv1", "shufflenetv2"),
        *("mlp", "cnn_small", "cnn_tiny"),
    }
    assert set(available_models()) == expected | {"lm_small", "lm_tiny"}
    assert sorted(available_models()) == available_models()
    assert isinstance(ZOO_VERSION, str)
    assert ZOO_VERSION


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("in_channels", "size"), [(3, 32), (1, 8)])
def test_forward_returns_logits(name: str, in_channels: int, size: int) -> None:
    model = build_model(name, num_classes=7, in_channels=in_channels)
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_tap_hints_resolve_and_fire_once_in_order(name: str) -> None:
    model = build_model(name, num_classes=10, in_channels=1).eval()
    modules = dict(model.named_modules())
    stages, classifier = model.kd_stages, model.kd_classifier
    assert isinstance(stages, tuple)
    assert stages
    assert len(set(stages)) == len(stages)
    assert all(s in modules for s in stages), set(stages) - set(modules)
    assert isinstance(modules[classifier], nn.Linear)

    calls: list[str] = []
    seen: dict[str, torch.Tensor] = {}

    def hook(path: str):
        def fn(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            calls.append(path)
            seen[path] = inputs[0]

        return fn

    handles = [modules[p].register_forward_hook(hook(p)) for p in (*stages, classifier)]
    try:
        with torch.no_grad():
            model(torch.randn(2, 1, 8, 8))
    finally:
        for h in handles:
            h.remove()
    assert calls == [*stages, classifier]
    # The classifier's input is the flat penultimate embedding.
    assert seen[classifier].shape == (2, modules[classifier].in_features)


@pytest.mark.parametrize("name", ALL)
def test_modules_are_hook_friendly(name: str) -> None:
    model = build_model(name, num_classes=10)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus
    assert not any(m.inplace for m in relus)

    # No module object may run twice per forward, or a hook on it would be ambiguous.
    counts: dict[str, int] = {}
    handles = []
    for path, m in model.named_modules():
        if path and not list(m.children()):
            counts[path] = 0
            handles.append(
                m.register_forward_hook(lambda *_, p=path: counts.__setitem__(p, counts[p] + 1))
            )
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert max(counts.values()) == 1, {p: c for p, c in counts.items() if c > 1}


@pytest.mark.parametrize("name", RELU_OUT_NETS)
def test_every_residual_block_has_relu_out(name: str) -> None:
    model = build_model(name, num_classes=10)
    modules = dict(model.named_modules())
    for stage in model.kd_stages:
        blocks = list(modules[stage].children())
        assert blocks
        for block in blocks:
            assert isinstance(getattr(block, "relu_out", None), nn.ReLU), (stage, block)


def test_relu_out_input_is_the_preactivation() -> None:
    model = build_model("resnet8", num_classes=10, in_channels=1)
    captured: dict[str, torch.Tensor] = {}
    relu_out = dict(model.named_modules())["layer1.0.relu_out"]

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        captured["pre"], captured["post"] = inputs[0], out

    handle = relu_out.register_forward_hook(hook)
    model(torch.randn(4, 1, 8, 8))
    handle.remove()
    assert captured["pre"].min() < 0  # an inplace ReLU would have clamped it
    assert torch.equal(captured["post"], captured["pre"].clamp_min(0))


def test_stage_hook_outputs_can_be_backpropagated() -> None:
    # A hooked tensor must not be modified in place later in the forward pass.
    model = build_model("resnet8", num_classes=10, in_channels=1)
    feats: list[torch.Tensor] = []
    handles = [
        dict(model.named_modules())[p].register_forward_hook(lambda _m, _i, o: feats.append(o))
        for p in (*model.kd_stages, "layer1.0.bn2")
    ]
    logits = model(torch.randn(4, 1, 8, 8))
    for h in handles:
        h.remove()
    (logits.sum() + sum(f.pow(2).mean() for f in feats)).backward()


# Parameter counts at 100 classes as published in CRD (Tian et al., 2020) / RepDistiller.
LITERATURE_PARAMS_M = {
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.36,
}


@pytest.mark.parametrize(("name", "millions"), sorted(LITERATURE_PARAMS_M.items()))
def test_parameter_counts_match_literature(name: str, millions: float) -> None:
    n = _n_params(build_model(name, num_classes=100))
    assert n / 1e6 == pytest.approx(millions, rel=0.02)


def test_cnn_small_is_much_larger_than_cnn_tiny() -> None:
    small = _n_params(build_model("cnn_small", num_classes=10, in_channels=1))
    tiny = _n_params(build_model("cnn_tiny", num_classes=10, in_channels=1))
    assert small > 100 * tiny


def test_mlp_stages_follow_hidden() -> None:
    model = build_model("mlp", num_classes=10, in_channels=1, hidden=(32, 16, 8))
    assert model.kd_stages == ("hidden.relu1", "hidden.relu2", "hidden.relu3")
    assert set(model.kd_stages) <= dict(model.named_modules()).keys()
    assert model.fc.in_features == 8


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(KeyError, match=r"unknown model `resnet65`; did you mean `resnet56`"):
        build_model("resnet65", num_classes=10)
    with pytest.raises(KeyError, match=r"did you mean `wrn_40_2`"):
        build_model("WRN_40_2x", num_classes=10)


def test_unknown_name_without_match_lists_models() -> None:
    with pytest.raises(KeyError, match=r"available: cnn_small") as info:
        build_model("transformer", num_classes=10)
    assert "did you mean" not in str(info.value)


def test_repdistiller_aliases() -> None:
    assert type(build_model("mobile_half", 10)).__name__ == "MobileNetV2"
    assert type(build_model("ShuffleV2", 10)).__name__ == "ShuffleNetV2"


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        build_model("resnet8", num_classes=10, widen_factor=2)


def test_mobilenetv2_stem_stride_keeps_parameters() -> None:
    a = build_model("mobilenetv2", num_classes=10, in_channels=1)
    b = build_model("mobilenetv2", num_classes=10, in_channels=1, stem_stride=1)
    assert _n_params(a) == _n_params(b)
    with torch.no_grad():
        assert b(torch.randn(2, 1, 8, 8)).shape == (2, 10)
