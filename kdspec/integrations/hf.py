"""Distil with Hugging Face's ``transformers.Trainer`` (``pip install 'kdspec[hf]'``).

:class:`DistillTrainer` is a ``Trainer`` whose model is the compiled
:class:`~kdspec.compiler.Distiller`: the teacher is one of its submodules, so it moves to the
training device with the student; the optimizer gets every parameter some stage trains
(students, adapters, learned losses) and each stage turns gradients on for its own set; stages
switch at the steps ``kdspec train`` would switch them; every term's mean since the last log
is logged beside ``loss`` (``kd``, ``ce`` ... in ``trainer.state.log_history``, TensorBoard,
W&B: wherever ``report_to`` sends logs).

Example (any model whose forward takes the batch's keys; here a zoo CNN on digits)::

    from kdspec.api import load_method
    from kdspec.compiler import compile_spec
    from kdspec.integrations.hf import DistillTrainer, as_features
    from transformers import TrainingArguments

    d = compile_spec(load_method("hinton"), {"t": teacher, "s": student}, example)
    args = TrainingArguments("out", num_train_epochs=2, per_device_train_batch_size=64,
                             learning_rate=0.05, report_to=[])
    trainer = DistillTrainer(d, args=args, train_dataset=as_features(train_set))
    trainer.train()
    trainer.student   # the distilled student module
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback

from kdspec.compiler.sequence import NOT_INPUTS
from kdspec.integrations.stages import StageClock, all_trainable_parameters

__all__ = ["DistillTrainer", "as_features"]


class _Features(Dataset):
    def __init__(self, items: Any, key: str):
        self.items, self.key = items, key

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        return {self.key: item[0], "labels": item[1]}


def as_features(dataset: Any, key: str = "x") -> Dataset:
    """``(x, y, ...)`` items as ``{key: x, "labels": y}`` dicts, the form ``Trainer`` batches.

    ``key`` is the name of the models' input argument (``x`` for the kdspec zoo,
    ``pixel_values`` or ``input_ids`` for transformers models).
    """
    return _Features(dataset, key)


class _StageCallback(TrainerCallback):
    def __init__(self, trainer: DistillTrainer):
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        epochs = float(args.num_train_epochs)
        steps_per_epoch = max(1, round(state.max_steps / max(epochs, 1e-9)))
        self.trainer.clock = StageClock(self.trainer.distiller, epochs, steps_per_epoch)
        self.trainer.clock.step(state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.trainer.clock is not None:
            self.trainer.clock.step(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.trainer.distiller.after_step()  # EMA roles follow their source


class DistillTrainer(Trainer):
    """A ``transformers.Trainer`` that minimises a compiled spec's loss.

    Args:
        distiller: the compiled method (:func:`kdspec.compiler.compile_spec`).
        *args, **kwargs: ``Trainer``'s own arguments (``args``, ``train_dataset``,
            ``data_collator``, ``callbacks``, ...), except ``model``.

    Batches are dicts: ``labels`` are the labels, every other key is passed to the models
    (``model(**inputs)``); :func:`as_features` turns ``(x, y)`` datasets into that form.
    """

    def __init__(self, distiller: Any, *args: Any, **kwargs: Any):
        if "model" in kwargs:
            raise TypeError("DistillTrainer takes the distiller instead of `model`")
        self.distiller = distiller
        self.clock: StageClock | None = None
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        super().__init__(distiller, *args, **kwargs)
        # The distiller's forward takes the whole batch: no column is "unused" (Trainer would
        # drop every column not named in forward's signature).
        self.args.remove_unused_columns = False
        self._signature_columns = None
        self.add_callback(_StageCallback(self))

    @property
    def student(self) -> torch.nn.Module:
        """The first trained role (what a run reports): the distilled student."""
        return self.distiller.roles[self.distiller.eval_roles()[0]]

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """Every parameter that some stage trains goes into the one optimizer."""
        if self.optimizer is None:
            params = {id(p) for p in all_trainable_parameters(self.distiller)}
            for p in self.distiller.parameters():
                p.requires_grad_(id(p) in params)
            try:
                return super().create_optimizer(*args, **kwargs)
            finally:
                self.distiller.set_stage(self.distiller.stage_plans[0].name)
        return self.optimizer

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The spec's total loss; each term is remembered for the next log line."""
        labels = inputs.get("labels")
        x = {k: v for k, v in inputs.items() if k not in NOT_INPUTS}
        batch = {"x": x, "y": labels, "index": inputs.get("index")}
        if "response_mask" in inputs:  # token data: a mask, not a model input
            batch["response_mask"] = inputs["response_mask"]
        progress = self.clock.progress(self.state.global_step) if self.clock else None
        out = model(batch, progress=progress)
        if model.training:
            for name, value in out.terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
            self._term_count += 1
        return (out.loss, out) if return_outputs else out.loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add each term's mean since the last log (and the current stage's index)."""
        if self._term_count and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"term/{name}"] = total / self._term_count
            self._term_sums, self._term_count = {}, 0
            if self.clock is not None and self.clock.current is not None:
                logs["stage"] = float(self.clock.current[2].index)
        super().log(logs, *args, **kwargs)
