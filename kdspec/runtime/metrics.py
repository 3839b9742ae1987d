"""Evaluation metrics: what a run reports (``[train] metric``) and how models are scored.

Every evaluation computes all of them (they share one pass over the data):

* ``top1`` / ``top5``: accuracy (%) of the first / first five predictions (top-5 counts the
  first ``min(5, classes)``);
* ``perplexity``: ``exp`` of the mean cross-entropy per sample (lower is better);

Token data (logits ``[B, T, V]``, labels ``[B, T]``, unshifted as in Hugging Face) counts label
tokens, not rows: top-1/top-5 are next-token accuracies, perplexity is ``exp`` of the mean
cross-entropy per label token (labels ``-100`` left out; a causal LM's logits at ``t`` predict
the label at ``t + 1``) and the cosine is averaged over those tokens.
* ``teacher_cosine``: mean cosine similarity between the model's logits and the teacher's on
  the same inputs (only when a teacher is given; 1 means the same outputs up to scale).

``[train] metric`` names the one that ``train``, ``compare`` and the summary report, and that
``eval = "best_val"`` selects the epoch by.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdspec.compiler.taps import call_model, is_causal, logits_of, next_token_pairs

__all__ = ["METRICS", "Metric", "MetricName", "evaluate_logits"]

MetricName = Literal["top1", "top5", "perplexity", "teacher_cosine"]


@dataclass(frozen=True)
class Metric:
    """A reportable metric: its key in evaluation results, a label, and its direction."""

    name: str
    label: str
    higher_is_better: bool = True
    needs_teacher: bool = False

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b


METRICS: dict[str, Metric] = {
    "top1": Metric("top1", "top-1 (%)"),
    "top5": Metric("top5", "top-5 (%)"),
    "perplexity": Metric("perplexity", "perplexity", higher_is_better=False),
    "teacher_cosine": Metric("teacher_cosine", "cosine to the teacher", needs_teacher=True),
}


@torch.no_grad()
def evaluate_logits(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    move: Callable[[Any, torch.device], Any],
    reference: nn.Module | None = None,
) -> dict[str, float]:
    """Every metric of ``model`` over ``loader`` (``teacher_cosine`` only with ``reference``).

    Models run in eval mode; their (and their submodules') train/eval state is restored.

    Raises:
        TypeError: A model returned no logits.
    """
    models = [model] + ([reference] if reference is not None else [])
    modes = [(m, m.training) for net in models for m in net.modules()]
    for net in models:
        net.eval()
    correct1, correct5, loss, cosine, n = 0, 0, 0.0, 0.0, 0
    try:
        for batch in loader:
            x, y = move(batch[0], device), move(batch[1], device)
            full = _logits(model, x)  # [B, K], or [B, T, V] for token data
            logits, target = next_token_pairs(full, y, is_causal(model))  # [N, K], [N]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # [N, k]
            correct1 += int((top[:, 0] == target).sum())
            correct5 += int((top == target[:, None]).any(1).sum())
            if reference is not None:
                ref, _ = next_token_pairs(_logits(reference, x), y, is_causal(model))
                cosine += float(F.cosine_similarity(logits, ref, dim=1).sum())
            n += len(target)
    finally:
        for m, mode in modes:
            m.train(mode)
    count = max(n, 1)
    mean_ce = loss / count
    out = {
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "loss": mean_ce,
        "perplexity": math.exp(mean_ce) if mean_ce < 700 else math.inf,
        "n": n,
    }
    if reference is not None:
        out["teacher_cosine"] = cosine / count
    return out


def _logits(model: nn.Module, x: Any) -> torch.Tensor:
    logits = logits_of(call_model(model, x))
    if logits is None:
        raise TypeError("the model returned no logits")
    return logits.float()
