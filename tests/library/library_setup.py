"""Tiny CPU models and data that every library spec compiles and trains on.

Vision specs run on ``[B, 1, 8, 8]`` synthetic images with zoo models (a ``cnn_small`` teacher
and a ``resnet8`` student by default: three stages each, different widths, so adapters have
work to do); NLP specs on tiny randomly initialised Hugging Face BERTs built from a
``BertConfig`` (no download): a 12-layer teacher and the student depth the spec's module
paths name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdspec.zoo import build_model

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
SPEC_PATHS = sorted(SPECS.glob("*.kd"))
SPEC_NAMES = [p.stem for p in SPEC_PATHS]

B, K, N = 8, 10, 32  # batch, classes, training-set size
VOCAB, SEQ, NLP_CLASSES = 30, 8, 3

NLP = {"tinybert", "distilbert", "minilm", "bert_pkd", "minilm_v2", "sentence_embedding"}
# Specs that read a bare encoder (`AutoModel`: `output.last_hidden_state`, `encoder.layer.*`).
NLP_BASE = {"minilm_v2", "sentence_embedding"}

# Role -> zoo model, per spec (default: teacher cnn_small, student resnet8).
VISION: dict[str, dict[str, str]] = {
    "default": {"t": "cnn_small", "s": "resnet8"},
    "fsp": {"t": "resnet14", "s": "resnet8"},  # FSP needs equal channel counts
    "ban": {"t": "resnet8", "s": "resnet8"},
    "tfkd_self": {"t": "resnet8", "s": "resnet8"},
    "dml": {"p1": "resnet8", "p2": "cnn_tiny"},
    "byot": {"s": "resnet8"},
    "one": {"s": "resnet8"},
    "mean_teacher": {"s": "resnet8"},
    "cskd": {"s": "resnet8"},
    "tfkd_reg": {"s": "resnet8"},
    "takd": {"t": "cnn_small", "ta": "resnet14", "s": "resnet8"},
    "multi_teacher": {"t1": "cnn_small", "t2": "resnet14", "t3": "cnn_small", "s": "resnet8"},
}

# Overrides that keep a spec fast on 32 samples (same method, smaller numbers).
OVERRIDES: dict[str, dict[str, object]] = {
    "crd": {"nce_k": 64},
    "topk_kl": {"k": 3},  # fewer than the 10 classes of the images
    "topk_rest_kl": {"k": 3},
}


def images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 8, 8, generator=g)
    y = torch.arange(N) % K
    return x, y, TensorDataset(x, y)


def vision_models(name: str) -> dict[str, nn.Module]:
    roles = VISION.get(name, VISION["default"])
    return {r: build_model(a, num_classes=K, in_channels=1) for r, a in roles.items()}


def bert(layers: int, hidden: int, mlm: bool = False, base: bool = False) -> nn.Module:
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        num_labels=NLP_CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    if base:  # no pooler: nothing a spec leaves without gradient
        return transformers.BertModel(cfg, add_pooling_layer=False)
    cls = transformers.BertForMaskedLM if mlm else transformers.BertForSequenceClassification
    return cls(cfg)


# Student depth and width per NLP spec: TinyBERT-4 (narrower, through W_h), MiniLM's 6-layer
# student (narrower), BERT-PKD and DistilBERT at the teacher's width (their losses need it).
NLP_STUDENTS: dict[str, tuple[int, int]] = {
    "tinybert": (4, 12),
    "minilm": (6, 12),
    "bert_pkd": (6, 24),
    "distilbert": (6, 24),
    "minilm_v2": (6, 12),
    "sentence_embedding": (2, 12),
}


def nlp_setup(name: str, seed: int = 0) -> tuple[dict[str, nn.Module], Any]:
    """Teacher/student BERTs and one batch ``(inputs, labels)`` for an NLP spec."""
    g = torch.Generator().manual_seed(seed)
    layers, hidden = NLP_STUDENTS[name]
    mlm = name == "distilbert"
    base = name in NLP_BASE
    models = {"t": bert(12, 24, mlm, base), "s": bert(layers, hidden, mlm, base)}
    ids = torch.randint(0, VOCAB, (B, SEQ), generator=g)
    x = {"input_ids": ids, "attention_mask": torch.ones(B, SEQ, dtype=torch.long)}
    if base:
        x["attention_mask"][: B // 2, SEQ // 2 :] = 0  # padding: token data with masks
    if mlm:
        y = torch.randint(0, VOCAB, (B, SEQ), generator=g)
        y[:, ::2] = -100  # unmasked positions carry no MLM label
    else:
        y = torch.randint(0, NLP_CLASSES, (B,), generator=g)
    return models, (x, y)
