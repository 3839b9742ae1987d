"""Mixed precision: what `[train] amp` / `--amp` give on each device, and a bf16 run on CPU."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.data import synthetic_splits
from kdspec.diagnostics import KdError
from kdspec.runtime import accel
from kdspec.runtime.accel import precision_for
from kdspec.runtime.runfile import TrainConfig
from kdspec.runtime.trainer import train

CPU = torch.device("cpu")


def test_precision_rules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not precision_for(False, CPU).enabled
    assert not precision_for("off", CPU).enabled
    with pytest.raises(KdError) as err:
        precision_for("fp16", CPU)
    assert err.value.diagnostics[0].code == "KD501"
    assert "bf16" in str(err.value)
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    p = precision_for(True, CPU)  # true on CPU: bf16, no scaler
    assert (p.enabled, p.dtype, p.scaler, p.name) == (True, torch.bfloat16, False, "bf16")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    assert precision_for("bf16", CPU).dtype == torch.bfloat16  # allowed, but said loudly
    assert "emulated" in capsys.readouterr().err
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: None)
    precision_for("bf16", CPU)
    assert "unknown" in capsys.readouterr().err


def test_amp_is_a_run_file_key_and_an_option() -> None:
    from kdspec.cli.train import add_run_options, load_job

    assert TrainConfig(amp="bf16").amp == "bf16"
    with pytest.raises(ValueError):
        TrainConfig(amp="fp8")
    p = argparse.ArgumentParser()
    add_run_options(p)
    run, _ = load_job(p.parse_args(["--amp", "bf16", "--compile"]), "hinton")
    assert (run.config.train.amp, run.config.train.compile) == ("bf16", True)
    run, _ = load_job(p.parse_args(["--amp", "off"]), "hinton")
    assert run.config.train.amp is False


class _Dtypes:
    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if module.training:
            self.seen.add(output.dtype)


def test_a_bf16_run_on_cpu_autocasts_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    splits = synthetic_splits(n=64, num_classes=3, input_shape=(1, 4, 4), seed=0)
    low = load_method("hinton")
    torch.manual_seed(0)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    models = {"t": mlp(), "s": mlp()}
    batch = tuple(torch.utils.data.default_collate([splits.train[i] for i in range(4)]))
    d = compile_spec(low, models, batch, num_classes=3, train_data=splits.train)
    dtypes = _Dtypes()
    d.roles["s"][1].register_forward_hook(dtypes)
    cfg = TrainConfig(epochs=1, amp="bf16")
    result = train(d, splits.train, cfg, tmp_path, batch_size=16, device="cpu")
    assert dtypes.seen == {torch.bfloat16}
    assert math.isfinite(result.records[-1]["loss"])
    assert d.roles["s"][1].weight.dtype == torch.float32  # weights stay fp32
    off = _Dtypes()
    d.roles["s"][1].register_forward_hook(off)
    train(d, splits.train, TrainConfig(epochs=1), tmp_path / "fp32", batch_size=16, device="cpu")
    assert off.seen == {torch.float32}


@pytest.mark.parametrize("spec", ["hinton", "fitnets", "at", "dml"])
def test_compiled_roles_trace_one_graph_each_with_their_taps_and_compile_once(spec: str) -> None:
    from kdspec.ir.evaluate import Progress
    from kdspec.runtime.accel import compile_roles
    from kdspec.zoo import build_model

    splits = synthetic_splits(n=64, num_classes=4, input_shape=(1, 8, 8), seed=0)
    low = load_method(spec)
    batch = tuple(torch.utils.data.default_collate([splits.train[i] for i in range(8)]))

    def make() -> Any:
        torch.manual_seed(0)
        models = {r.name: build_model("cnn_tiny", 4, 1) for r in low.method.roles}
        torch.manual_seed(1)
        d = compile_spec(low, models, batch, num_classes=4, train_data=splits.train)
        d.set_stage(d.method.effective_stages()[0].name)
        return d.train()

    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, inputs: Any) -> Any:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    eager, compiled = make(), make()
    keys = list(compiled.state_dict())
    assert compile_roles(compiled, backend=counting) == len(compiled.roles)
    assert list(compiled.state_dict()) == keys  # checkpoints unchanged
    for step in range(3):
        progress = Progress.at(step, 10, 100)
        want, got = eager(batch, progress=progress), compiled(batch, progress=progress)
        assert float(got.loss) == pytest.approx(float(want.loss), rel=1e-5)
        for name, value in want.terms.items():
            assert float(got.terms[name]) == pytest.approx(float(value), rel=1e-5)
        if step == 0:
            first = list(graphs)
            # one graph per network (peers of one architecture share theirs): no graph breaks
            # in the tap reads
            assert 1 <= len(first) <= len(compiled.roles)
    assert graphs == first  # no recompilation on later steps
