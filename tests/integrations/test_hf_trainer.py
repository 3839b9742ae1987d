"""The Hugging Face Trainer integration: stages, adapters in the optimizer, per-term logs."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from transformers import TrainingArguments

from kdspec.integrations.hf import DistillTrainer, as_features
from kdspec.integrations.stages import all_trainable_parameters

from .helpers import digits_distiller, subset


def make_trainer(tmp_path, spec: str = "fitnets", epochs: int = 4, **overrides):
    d, teacher, student, train = digits_distiller(spec, **overrides)
    args = TrainingArguments(
        str(tmp_path),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = DistillTrainer(d, args=args, train_dataset=as_features(subset(train, 64)))
    return trainer, d, teacher, student


def test_fitnets_stages_adapters_and_term_logs(tmp_path) -> None:
    # 4 epochs of 2 steps: the hint stage takes 25% = 2 steps, then KD + CE
    trainer, d, teacher, student = make_trainer(tmp_path, hint_epochs=25)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    regressor = [p for n, p in d.named_parameters() if n.startswith("terms.hint")]
    assert regressor, "FitNets' regressor is an adapter with parameters"
    reg_before = [p.detach().clone() for p in regressor]
    fc_before = student.fc.weight.detach().clone() if hasattr(student, "fc") else None
    trainer.train()

    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in regressor} <= opt_params
    assert {id(p) for p in all_trainable_parameters(d)} == opt_params
    assert not any(id(p) in opt_params for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher changed: {k}"
    assert any(not torch.equal(a, b) for a, b in zip(reg_before, regressor, strict=True))

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 8
    assert [h["stage"] for h in logs] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert all(set(h) >= {"term/hint"} for h in logs[:2])
    assert all(set(h) >= {"term/kd", "term/ce"} and "term/hint" not in h for h in logs[2:])
    kd = logs[2]
    assert kd["loss"] == pytest.approx(kd["term/kd"] + kd["term/ce"], rel=1e-4)
    if fc_before is not None:  # the classifier is outside the hint prefix, trained in stage 2
        assert not torch.equal(fc_before, student.fc.weight)


def test_teacher_moves_with_the_distiller(tmp_path) -> None:
    trainer, d, teacher, student = make_trainer(tmp_path, spec="hinton", epochs=1)
    assert trainer.model is d
    devices = {p.device for p in d.parameters()}
    assert devices == {trainer.args.device}
    trainer.train()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert trainer.student is student


def test_model_argument_is_refused(tmp_path) -> None:
    d, *_ = digits_distiller("hinton")
    with pytest.raises(TypeError, match="instead of `model`"):
        DistillTrainer(d, model=d)
