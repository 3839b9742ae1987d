"""The CIFAR-100 benchmark run files compile with their models and train for two steps.

CIFAR-100 itself is not needed: random tensors of its shape (3x32x32, 100 classes) stand in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.data import IndexedTensorDataset
from kdspec.runtime import load_run
from kdspec.runtime.models import build_model_from_source
from kdspec.runtime.trainer import lr_factor, train

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

RUNS = Path(__file__).resolve().parents[2] / "runs"
PAIRS = [
    "cifar100_resnet32x4_resnet8x4",
    "cifar100_wrn_40_2_wrn_16_2",
    "cifar100_resnet56_resnet20",
    "cifar100_vgg13_vgg8",
]


def _random_set(n: int, seed: int) -> IndexedTensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return IndexedTensorDataset(
        torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 100, (n,), generator=gen)
    )


@pytest.mark.parametrize("name", PAIRS)
def test_recipe_is_the_published_one(name: str) -> None:
    cfg = load_run(RUNS / f"{name}.toml").config
    assert cfg.data.source == "torchvision:CIFAR100"
    assert cfg.data.batch_size == 64
    t = cfg.train
    assert (t.epochs, t.optimizer, t.lr, t.momentum, t.weight_decay) == (
        240,
        "sgd",
        0.05,
        0.9,
        5e-4,
    )
    assert (t.schedule, t.milestones, t.gamma) == ("step", [150, 180, 210], 0.1)
    spe = 782  # ceil(50000 / 64)
    factors = [lr_factor(t, e * spe, 240 * spe, spe) for e in (0, 149, 150, 180, 210, 239)]
    assert factors == pytest.approx([1, 1, 0.1, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("name", PAIRS)
def test_run_file_compiles_and_trains_two_steps(name: str, tmp_path: Path) -> None:
    run = load_run(RUNS / f"{name}.toml")
    models = {
        role: build_model_from_source(role, source, 100, 3, run)
        for role, source in run.config.models.items()
    }
    train_set = _random_set(8, 0)
    batch = tuple(torch.utils.data.default_collate([train_set[i] for i in range(4)]))
    distiller = compile_spec(load_method("hinton"), models, batch, train_data=train_set)
    assert distiller.num_classes == 100
    cfg = run.config.train.model_copy(update={"epochs": 1})
    result = train(
        distiller,
        train_set,
        cfg,
        tmp_path,
        batch_size=4,
        test_set=_random_set(4, 1),
        eval_batch_size=4,
    )
    (record,) = result.records
    assert record["step"] == 2
    assert set(record["terms"]) == {"kd", "ce"}
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert record["lr"] == pytest.approx(0.05)
