"""The trainer's recipe pieces one by one (fast: a linear model on a few examples), and the
:class:`Checkpoint` file. The whole loop (resume bit-identity, files, KD503) is in
``test_trainer.py``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdspec.data import synthetic_splits
from kdspec.diagnostics import KdError
from kdspec.runtime.checkpoint import Checkpoint, Position, rng_state, set_rng_state
from kdspec.runtime.runfile import TrainConfig
from kdspec.runtime.supervised import Supervised
from kdspec.runtime.trainer import TrainOptions, TrainRecipe

SPLITS = synthetic_splits(n=40, num_classes=3, input_shape=(4,), seed=0)


class _Linear(nn.Module):
    """A linear classifier whose output turns NaN while ``poison`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.poison = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out * float("nan") if self.poison else out


def _recipe(tmp_path: Path, **options: Any) -> TrainRecipe:
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, lr=0.1, schedule="none")
    opts = TrainOptions(batch_size=5, device=torch.device("cpu"), **options)
    recipe = TrainRecipe(Supervised(_Linear(), "s"), SPLITS.train, cfg, tmp_path, opts)
    recipe.setup()
    return recipe


def _batch() -> Any:
    return tuple(torch.utils.data.default_collate([SPLITS.train[i] for i in range(8)]))


# -- Checkpoint ---------------------------------------------------------------------------------


def _checkpoint(**changes: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "fingerprint": "abc",
        "position": Position(1, 2, 30, 3),
        "global_step": 70,
        "global_epoch": 7.5,
        "elapsed": 1.25,
        "best": {"s": {"epoch": 3.0, "val": {"top1": 50.0}, "test": None}},
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "optimizer": None,
        "scaler": None,
        "rng": rng_state(torch.Generator().manual_seed(3)),
    }
    return Checkpoint(**{**fields, **changes})


def test_checkpoint_round_trips_through_its_file(tmp_path: Path) -> None:
    ckpt = _checkpoint(done=True)
    ckpt.save(tmp_path / "c.pt")
    back = Checkpoint.load(tmp_path / "c.pt")
    assert back.position == Position(1, 2, 30, 3)
    assert (back.fingerprint, back.global_step, back.global_epoch, back.done) == ("abc", 70, 7.5, 1)
    assert back.best == ckpt.best
    assert torch.equal(back.model["w"], ckpt.model["w"])
    # The file is the plain dict every earlier version wrote (weights_only loads it).
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["version"] == 1
    assert raw["position"] == {"stage": 1, "repeat": 2, "steps_done": 30, "stage_epoch": 3}


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint", {"weights": 1}, {"position": {"stage": 0}, "model": {}}],
    ids=["bytes", "another-dict", "missing-fields"],
)
def test_unreadable_checkpoints_are_kd405_and_kept(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    before = path.read_bytes()
    with pytest.raises(KdError) as info:
        Checkpoint.load(path)
    assert info.value.diagnostics[0].code == "KD405"
    assert path.read_bytes() == before


def test_position_orders_repetitions() -> None:
    pos = Position(stage=1, repeat=1, steps_done=5)
    assert pos.at(1, 1) and not pos.at(1, 0)
    assert pos.past(0, 3) and pos.past(1, 0)
    assert not pos.past(1, 1) and not pos.past(2, 0)


def test_rng_state_restores_every_generator() -> None:
    gen = torch.Generator().manual_seed(5)
    state = rng_state(gen)
    first = (random.random(), torch.rand(3), torch.rand(2, generator=gen))
    set_rng_state(state, gen)
    again = (random.random(), torch.rand(3), torch.rand(2, generator=gen))
    assert first[0] == again[0]
    assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])


# -- the recipe's pieces ------------------------------------------------------------------------


def test_setup_plans_the_run(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, val_set=SPLITS.val)
    assert len(SPLITS.train) == 25
    assert recipe.steps_per_epoch == 5  # batches of 5
    assert recipe.total_steps == 10  # two epochs
    assert [s.name for s in recipe.stages] == ["main"]
    assert set(recipe.evals) == {"val"}
    assert recipe.roles == ["s"]


def test_step_updates_and_counts(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    run = recipe.start_repeat(recipe.stages[0], 0)
    before = recipe.model.state_dict()["roles.s.fc.weight"].clone()
    values = recipe.step(run, _batch())
    assert values is not None and set(values) == {"loss", "ce"}
    assert (run.steps_done, recipe.global_step) == (1, 1)
    assert not torch.equal(recipe.model.state_dict()["roles.s.fc.weight"], before)


def test_step_skips_a_nonfinite_batch_without_an_update(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, on_nonfinite="skip")
    run = recipe.start_repeat(recipe.stages[0], 0)
    recipe.model.roles["s"].poison = True
    before = recipe.model.state_dict()["roles.s.fc.weight"].clone()
    assert recipe.step(run, _batch()) is None
    assert (run.steps_done, recipe.global_step) == (1, 1)
    assert torch.equal(recipe.model.state_dict()["roles.s.fc.weight"], before)


def test_step_stops_at_a_nonfinite_batch_with_kd503(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    run = recipe.start_repeat(recipe.stages[0], 0)
    recipe.model.roles["s"].poison = True
    with pytest.raises(KdError) as info:
        recipe.step(run, _batch())
    assert info.value.diagnostics[0].code == "KD503"
    assert (tmp_path / "summary.json").exists()


def test_record_averages_over_counted_batches(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    run = recipe.start_repeat(recipe.stages[0], 0)
    run.stage_epoch = 1
    sums = {"loss": 3.0, "ce": 3.0, "skipped_nonfinite": 1.0}
    record = recipe.record(run, 4, sums, lr=0.1)
    assert record["loss"] == 1.0 and record["terms"] == {"ce": 1.0}
    assert record["skipped_nonfinite"] == 1
    assert (record["stage"], record["repeat"], record["stage_epoch"]) == ("main", 0, 1)


def test_checkpoint_then_resume_restores_the_position(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    run = recipe.start_repeat(recipe.stages[0], 0)
    recipe.step(run, _batch())
    recipe.checkpoint(run)
    state = recipe.model.state_dict()
    again = _recipe(tmp_path, resume=True)
    ckpt = again.resume()
    assert ckpt is not None and ckpt.position == Position(0, 0, 1, 0)
    assert again.global_step == 1
    resumed = again.start_repeat(again.stages[0], 0)
    assert resumed.steps_done == 1 and again.pending is None
    for k, v in state.items():
        assert torch.equal(again.model.state_dict()[k], v)


def test_resume_of_another_job_is_kd501(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    recipe.checkpoint(recipe.start_repeat(recipe.stages[0], 0))
    other = _recipe(tmp_path, resume=True, meta={"key": "another job"})
    with pytest.raises(KdError) as info:
        other.resume()
    assert info.value.diagnostics[0].code == "KD501"
