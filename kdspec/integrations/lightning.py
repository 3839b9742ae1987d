"""Distil with Lightning (``pip install 'kdspec[lightning]'``).

:class:`DistillModule` is a ``LightningModule`` around a compiled
:class:`~kdspec.compiler.Distiller`: the teacher is a submodule (it moves to the device with
the student and is never optimised), the optimizer holds every parameter some stage trains
(adapters included), stages are epoch ranges of ``max_epochs`` (planned as ``kdspec train``
plans them, rounded to whole epochs), and the loss and every term are logged through
``self.log`` (``train/loss``, ``train/kd``, ...).

Example::

    import lightning as L
    from kdspec.integrations.lightning import DistillModule

    module = DistillModule(distiller, lr=0.05)             # or optimizer=lambda params: ...
    L.Trainer(max_epochs=20).fit(module, train_loader)     # (x, y) or (x, y, index) batches
    module.student                                         # the distilled student
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch import nn

from kdspec.integrations.stages import StageClock, all_trainable_parameters

__all__ = ["DistillModule"]


class DistillModule(L.LightningModule):
    """A LightningModule that minimises a compiled spec's loss.

    Args:
        distiller: the compiled method (:func:`kdspec.compiler.compile_spec`).
        optimizer: a factory ``params -> torch.optim.Optimizer`` (default: SGD with ``lr``,
            momentum 0.9 and weight decay 5e-4, the kdspec run default).
        lr: learning rate of the default optimizer.
    """

    def __init__(
        self,
        distiller: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        lr: float = 0.05,
    ):
        super().__init__()
        self.distiller: Any = distiller
        self.optimizer_factory = optimizer
        self.lr = lr
        self.clock: StageClock | None = None

    @property
    def student(self) -> nn.Module:
        """The first trained role (what a run reports): the distilled student."""
        return self.distiller.roles[self.distiller.eval_roles()[0]]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over every parameter some stage trains."""
        params = all_trainable_parameters(self.distiller)
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def on_train_start(self) -> None:
        """Plan the stages over ``max_epochs`` in whole epochs."""
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError("DistillModule needs `Trainer(max_epochs=...)` to plan its stages")
        self.clock = StageClock(self.distiller, epochs, steps_per_epoch=1)

    def on_train_epoch_start(self) -> None:
        """Enter the stage this epoch belongs to."""
        assert self.clock is not None
        stage = self.clock.step(self.current_epoch)
        self.log("stage", float(stage.index), on_step=False, on_epoch=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The spec's total loss; the loss and each term are logged."""
        assert self.clock is not None
        progress = self.clock.progress(self.current_epoch)
        n = self.trainer.num_training_batches
        if isinstance(n, int) and n > 0:  # fractional epoch within the stage, for schedules
            progress = replace(progress, epoch=progress.epoch + batch_idx / n)
        out = self.distiller(batch, progress=progress)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True)
        for name, value in out.terms.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True)
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA roles follow their source after each optimizer step."""
        self.distiller.after_step()

    def forward(self, x: Any) -> Any:
        """The student's prediction."""
        return self.student(x)
