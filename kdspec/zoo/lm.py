"""Small causal transformer language models (the embedded LM job's teacher and student).

``lm_small`` (4 layers, width 128) is the teacher and ``lm_tiny`` (2 layers, width 64) the
student of ``runs/tiny_lm.toml``; both train on a CPU in minutes. They take the batch of a text
source (``input_ids``, ``attention_mask``), return next-token logits ``[B, T, V]`` and have
their own :meth:`CausalLM.generate` (the on-policy and sequence-level views call it, as they
call a Hugging Face model's). The stages are the blocks' outputs ``[B, T, D]``, the classifier
is the output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalLM", "lm_small", "lm_tiny"]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention: separate query, key and value projections, named as in
    Hugging Face BERT (``attention.self.query``), so one attention-relation spec (MiniLM) taps
    a BERT and these models alike: ``s.stage[-1]."attention.self.query"``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor, past: list[Tensor] | None = None) -> Tensor:
        """``[B, T, D] -> [B, T, D]``; position t attends to positions <= t only.

        ``past`` (generation): the keys and values of the positions before ``x``, extended in
        place; after the prompt ``x`` is one new position, which attends to all of them.
        """
        b, t, d = x.shape
        q, k, v = (
            z(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for z in (self.query, self.key, self.value)
        )
        if past is not None:
            if past:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            past[:] = [k, v]
        if t != k.shape[2] and t != 1:
            raise ValueError("after the prompt, generation adds one position at a time")
        p = self.dropout if self.training else 0.0
        causal = t == k.shape[2] and t > 1
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
        return a.transpose(1, 2).reshape(b, t, d)


class Attention(nn.Module):
    """Self-attention (``self``) and the output projection (``proj``)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self = SelfAttention(width, heads, dropout)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, past: list[Tensor] | None = None) -> Tensor:
        return self.proj(self.self(x, past))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, past: list[Tensor] | None = None) -> Tensor:
        """``[B, T, D] -> [B, T, D]`` (``past``: see :class:`SelfAttention`)."""
        x = x + self.attention(self.norm1(x), past)
        return x + self.mlp(self.norm2(x))


class CausalLM(nn.Module):
    """Token and position embeddings, ``layers`` blocks, a final norm and the output head.

    Right padding needs no attention mask: a causal model's real positions never see the
    padding after them (``attention_mask`` is accepted for the Hugging Face call convention).

    Args:
        num_classes: Vocabulary size (a text source's ``num_classes``).
        in_channels: Longest sequence the position embedding covers (a text source's
            sequence length; at least 256 positions are kept so generation can go on).
        width: Model width.
        layers: Number of blocks.
        heads: Attention heads (must divide ``width``).
        dropout: Attention dropout while training.
    """

    kd_classifier: str = "head"
    kd_causal: bool = True  # logits at t predict token t + 1 (labels are unshifted)

    def __init__(
        self,
        num_classes: int = 259,
        in_channels: int = 256,
        width: int = 128,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads ({heads}) must divide width ({width})")
        self.max_len = max(int(in_channels), 256)
        self.embed = nn.Embedding(num_classes, width)
        self.pos = nn.Embedding(self.max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes, bias=False)
        self.kd_stages = tuple(f"blocks.{i}" for i in range(layers))
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:  # residual projections scaled by depth (GPT-2)
            assert isinstance(block, Block)
            nn.init.normal_(block.attention.proj.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Next-token logits ``[B, T, V]`` of token ids ``[B, T]``."""
        return self._logits(input_ids)

    def _logits(
        self, ids: Tensor, pasts: list[list[Tensor]] | None = None, start: int = 0
    ) -> Tensor:
        """Logits of ``ids`` at positions ``start, start + 1, ...``; ``pasts`` (one list per
        block) holds the keys and values of the positions before ``start``."""
        t = start + ids.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} tokens; this model covers {self.max_len}")
        x = self.embed(ids) + self.pos(torch.arange(start, t, device=ids.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if pasts is None else pasts[i])
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 16,
        do_sample: bool = True,
        temperature: float = 1.0,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> Tensor:
        """Prompt and continuation ``[B, T + max_new_tokens]``, as ``transformers``' ``generate``.

        Samples from ``softmax(logits / temperature)`` with the global torch generator
        (``torch.multinomial``), or takes the argmax when ``do_sample`` is false. After a row
        emits ``eos_token_id`` the rest of it is ``pad_token_id``. Prompts must be unpadded
        (same length), as for a Hugging Face model without left padding. The keys and values of
        earlier positions are kept (one new position per step) while the sequence fits the
        position embedding; beyond it the last ``max_len`` tokens are run again each step.
        """
        out = input_ids
        done = torch.zeros(len(out), dtype=torch.bool, device=out.device)
        cached = out.shape[1] + max_new_tokens <= self.max_len
        pasts: list[list[Tensor]] = [[] for _ in self.blocks]
        for step in range(max_new_tokens):
            if not cached:
                logits = self(out[:, -self.max_len :])[:, -1].float()  # [B, V]
            elif step == 0:
                logits = self._logits(out, pasts)[:, -1].float()
            else:
                logits = self._logits(out[:, -1:], pasts, out.shape[1] - 1)[:, -1].float()
            if do_sample:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            if pad_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_token_id is not None:
                done |= nxt == eos_token_id
        return out


def lm_small(num_classes: int = 259, in_channels: int = 256, **kwargs: object) -> CausalLM:
    """Teacher-sized causal LM: 4 blocks of width 128, 4 heads (~0.8M parameters + vocab)."""
    opts: dict[str, object] = {"width": 128, "layers": 4, "heads": 4, **kwargs}
    return CausalLM(num_classes, in_channels, **opts)  # type: ignore[arg-type]


def lm_tiny(num_classes: int = 259, in_channels: int = 256, **kwargs: object) -> CausalLM:
    """Student-sized causal LM: 2 blocks of width 64, 2 heads (~0.1M parameters + vocab)."""
    opts: dict[str, object] = {"width": 64, "layers": 2, "heads": 2, **kwargs}
    return CausalLM(num_classes, in_channels, **opts)  # type: ignore[arg-type]
