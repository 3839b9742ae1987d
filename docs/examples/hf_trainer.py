"""Distil FitNets with Hugging Face's Trainer on the embedded digits data (CPU, ~10 s).

pip install 'kdspec[hf]' accelerate
python docs/examples/hf_trainer.py
"""

import torch
from transformers import TrainingArguments

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.data import digits_splits
from kdspec.integrations.hf import DistillTrainer, as_features
from kdspec.zoo import build_model

torch.manual_seed(0)
splits = digits_splits(seed=0)
teacher, student = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)  # your models
x = torch.stack([splits.train[i][0] for i in range(16)])
y = torch.tensor([int(splits.train[i][1]) for i in range(16)])
method = load_method("fitnets", overrides={"hint_epochs": 1})  # 1 hint epoch, then KD + CE
distiller = compile_spec(method, {"t": teacher, "s": student}, example_batch=(x, y))

args = TrainingArguments(
    "runs-out/hf-fitnets",
    num_train_epochs=3,
    per_device_train_batch_size=64,
    learning_rate=0.05,
    logging_steps=10,
    save_strategy="no",
    report_to=[],  # "tensorboard", "wandb": per-term losses go wherever logs go
)
trainer = DistillTrainer(distiller, args=args, train_dataset=as_features(splits.train))
trainer.train()
for entry in trainer.state.log_history:
    if "loss" in entry:
        terms = {k: round(v, 4) for k, v in entry.items() if k.startswith("term/")}
        print(f"step {entry['step']}: loss {entry['loss']:.4f} {terms}")
student = trainer.student  # the distilled student
