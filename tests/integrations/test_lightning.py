"""The Lightning integration: stages as epoch ranges, adapters optimised, terms logged."""

from __future__ import annotations

import pytest

pytest.importorskip("lightning")

import lightning as L
import torch
from torch.utils.data import DataLoader

from kdspec.integrations.lightning import DistillModule

from .helpers import digits_distiller, subset

# Lightning 2.6 still uses torch's deprecated pytree LeafSpec under torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def fit(spec: str, epochs: int, **overrides):
    d, teacher, student, train = digits_distiller(spec, **overrides)
    module = DistillModule(d, lr=0.05)
    seen: list[tuple[int, str, set[str]]] = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            terms = {
                k.split("/", 1)[1].removesuffix("_epoch")
                for k in trainer.callback_metrics
                if k.startswith("train/") and k.endswith("_epoch")
            }
            seen.append((trainer.current_epoch, pl_module.distiller._stage.name, terms))

    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Watch()],
    )  # fmt: skip
    loader = DataLoader(subset(train, 64), batch_size=32, shuffle=False)
    return module, trainer, teacher, student, seen, loader


def test_fitnets_epoch_stages_and_terms() -> None:
    module, trainer, teacher, student, seen, loader = fit("fitnets", 4, hint_epochs=25)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    reg = [p for n, p in module.distiller.named_parameters() if n.startswith("terms.hint")]
    reg_before = [p.detach().clone() for p in reg]
    trainer.fit(module, loader)
    assert [(e, s) for e, s, _ in seen] == [(0, "hints"), (1, "distill"), (2, "distill"),
                                            (3, "distill")]  # fmt: skip
    assert seen[0][2] == {"loss", "hint"} and seen[1][2] >= {"loss", "kd", "ce"}
    opt = trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {id(p) for p in reg} <= in_opt
    assert not any(id(p) in in_opt for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(reg_before, reg, strict=True))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert module.student is student
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_needs_max_epochs() -> None:
    module, _, _, _, _, loader = fit("hinton", 1)
    trainer = L.Trainer(max_epochs=-1, max_steps=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    with pytest.raises(ValueError, match="max_epochs"):
        trainer.fit(module, loader)
