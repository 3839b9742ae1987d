"""Token data: the batch contract of sequence models and the masks a spec names.

A batch of token data is a dict of tensors: ``input_ids`` [B, L], ``attention_mask`` [B, L]
(1: a token, 0: padding), ``labels`` [B, L] in the Hugging Face convention (unshifted, -100
where no loss: padding, prompt tokens), optionally ``response_mask`` [B, L] (1 at response
tokens) and ``index`` [B] (sample ids). Every other key is a model input: models are called
``model(**inputs)``. The Distiller also takes ``{"x": inputs, "y": labels, "index": ...}``
(``transformers.Trainer`` batches, see :mod:`kdspec.integrations.hf`), with ``response_mask``
beside ``x``.

The masks a spec names with ``mask=``: ``attention`` (the attention mask), ``labels`` (labels
!= -100) and ``response`` (the response mask). A causal LM's logits at position i predict the
token at i + 1, so on causal models the ``labels`` and ``response`` masks are shifted by one to
line up with the outputs that predict those tokens. What names no mask uses ``attention``,
except the rows of per-token losses (``rows``, built-in losses on token values): ``labels``
when the batch has per-token labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdspec.ops.primitives import IGNORE_INDEX

# Keys of a token batch that are not model inputs.
NOT_INPUTS = ("labels", "index", "response_mask")
# Keys of a functional batch (tensors given by tap text) that are masks, not taps.
MASK_KEYS = ("attention_mask", "response_mask")


def is_token_inputs(x: Any) -> bool:
    """Whether model inputs are token data (a dict with ``input_ids``)."""
    return isinstance(x, dict) and "input_ids" in x


def is_causal(model: nn.Module) -> bool:
    """Whether a model is a causal LM: ``kd_causal = True``, an HF ``...ForCausalLM`` or
    ``...LMHeadModel``, or an HF model whose config says ``is_decoder``."""
    flag = getattr(model, "kd_causal", None)
    if flag is not None:
        return bool(flag)
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_decoder", False))


def _shift(mask: Tensor) -> Tensor:
    """mask[i] = source[i + 1]; the last position predicts nothing."""
    out = torch.zeros_like(mask)
    out[:, :-1] = mask[:, 1:]
    return out


def token_masks(
    inputs: Any,
    labels: Tensor | None,
    response: Tensor | None,
    attention: Tensor | None = None,
    *,
    causal: bool = False,
) -> dict[str, Tensor]:
    """The batch's masks by name ([B, L] booleans); empty off token data.

    Args:
        inputs: the models' inputs (a dict with ``input_ids`` on token data).
        labels: the batch's labels ([B, L] per token, or per sample).
        response: the response mask, if any.
        attention: the attention mask of a functional batch (no model inputs).
        causal: whether the models are causal LMs (labels and response masks shift by one).
    """
    if attention is None and is_token_inputs(inputs):
        ids = inputs["input_ids"]
        attention = inputs.get("attention_mask")
        if attention is None:
            attention = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if attention is None:
        return {}
    real = attention.to(torch.bool)
    masks = {"attention": real}
    if isinstance(labels, Tensor) and labels.shape == attention.shape:
        keep = labels != IGNORE_INDEX
        masks["labels"] = (_shift(keep) if causal else keep) & real
    if isinstance(response, Tensor):
        keep = response.to(torch.bool)
        masks["response"] = (_shift(keep) if causal else keep) & real
    return masks


def aligned_labels(labels: Tensor | None, causal: bool) -> Tensor | None:
    """Per-token labels lined up with the outputs that predict them: a causal LM's output at i
    predicts the label at i + 1 (the last position gets the ignore index)."""
    if not isinstance(labels, Tensor) or labels.dim() != 2 or not causal:
        return labels
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out
