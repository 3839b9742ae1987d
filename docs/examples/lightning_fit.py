"""Distil FitNets with Lightning on the embedded digits data (CPU, ~10 s).

pip install 'kdspec[lightning]'
python docs/examples/lightning_fit.py
"""

import lightning as L
import torch
from torch.utils.data import DataLoader

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.data import digits_splits
from kdspec.integrations.lightning import DistillModule
from kdspec.zoo import build_model

torch.manual_seed(0)
splits = digits_splits(seed=0)
teacher, student = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)  # your models
loader = DataLoader(splits.train, batch_size=64, shuffle=True)
x, y, _ = next(iter(loader))
method = load_method("fitnets", overrides={"hint_epochs": 1})  # epoch 0 hints, then KD + CE
distiller = compile_spec(method, {"t": teacher, "s": student}, example_batch=(x, y))

module = DistillModule(distiller, lr=0.05)  # or optimizer=lambda params: torch.optim.Adam(params)
trainer = L.Trainer(max_epochs=3, accelerator="auto", logger=False, enable_checkpointing=False)
trainer.fit(module, loader)
print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
student = module.student  # the distilled student
