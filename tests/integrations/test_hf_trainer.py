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


def test_tiny_bert_pair_with_token_batches(tmp_path) -> None:
    """A transformers teacher and student (built from configs, no download) on token batches."""
    from transformers import BertConfig, BertForSequenceClassification

    from kdspec.api import load_method
    from kdspec.compiler import compile_spec

    torch.manual_seed(0)

    def bert(hidden: int, layers: int) -> BertForSequenceClassification:
        cfg = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=2 * hidden, num_labels=3,
                         max_position_embeddings=16)  # fmt: skip
        return BertForSequenceClassification(cfg)

    teacher, student = bert(32, 2), bert(16, 1)
    ids = torch.randint(0, 50, (24, 8))
    labels = ids[:, 0] % 3
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": labels[i]} for i in range(24)]  # fmt: skip
    example = ({"input_ids": ids[:4], "attention_mask": torch.ones(4, 8, dtype=torch.long)},
               labels[:4])  # fmt: skip
    d = compile_spec(load_method("hinton"), {"t": teacher, "s": student}, example)
    args = TrainingArguments(str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True)  # fmt: skip
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillTrainer(d, args=args, train_dataset=rows)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and all({"term/kd", "term/ce"} <= set(h) for h in logs)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert trainer.student is student
