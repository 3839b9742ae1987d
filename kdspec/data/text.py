"""Text data for language models: documents -> token ids, labels and masks, padded or packed.

An example is a ``(prompt, response)`` pair of strings; a plain ``text`` is a response with an
empty prompt. Its tokens are ``[bos] + prompt + response + [eos]`` and the loss is on the
response tokens and the ``eos`` only. Items keep the ``(x, labels, index)`` shape of every
kdspec dataset (NOTES: the batch contract of token data):

* ``x`` = ``{"input_ids": [T], "attention_mask": [T]}`` (1 on real tokens, 0 on padding; right
  padding), so every model is called ``model(**x)`` as a Hugging Face model is;
* ``labels`` = ``[T]`` in the Hugging Face convention (unshifted): ``labels[t]`` is
  ``input_ids[t]`` where that token is a target, ``-100`` where it is not (``bos``, prompt,
  padding). A causal model's logits at ``t`` predict token ``t + 1``; the consumers shift.

``packing`` concatenates the examples of a split into one stream and cuts it into rows of
``seq_len`` tokens (no padding but in the last row; a row's first token is context only);
without it each example is one row, truncated to ``seq_len`` and right-padded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdspec.data.splits import Splits

__all__ = [
    "ByteTokenizer",
    "Example",
    "TextDataError",
    "TokenDataset",
    "Tokenizer",
    "pydoc_examples",
    "read_jsonl",
    "text_splits",
]

IGNORE = -100  # label of a position without loss (PyTorch's and Hugging Face's ignore index)


class TextDataError(ValueError):
    """Unusable text data (the message says which file, line and why)."""


@dataclass(frozen=True)
class Example:
    """One training example: the loss is on ``response`` (and the end token) only."""

    prompt: str
    response: str


class Tokenizer(Protocol):
    """What a text source needs of a tokenizer (:class:`HFTokenizer` wraps a Hugging Face one)."""

    vocab_size: int
    pad_token_id: int
    bos_token_id: int | None
    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """The built-in tokenizer: UTF-8 bytes (ids 0-255) plus pad, bos and eos (256-258)."""

    vocab_size = 259
    pad_token_id = 256
    bos_token_id: int | None = 257
    eos_token_id = 258

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; special ids are left out, broken UTF-8 is replaced."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", "replace")


class HFTokenizer:
    """A Hugging Face tokenizer seen through :class:`Tokenizer` (special ids from it).

    A tokenizer without a pad token pads with its end token (its labels are ``-100`` anyway).
    """

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise TextDataError("the tokenizer has no end-of-sequence (or separator) token")
        self.eos_token_id = int(eos)
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.bos_token_id = None if bos is None else int(bos)
        pad = tok.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens (the source adds bos and eos itself)."""
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""
        return str(self.tok.decode(list(ids), skip_special_tokens=True))


def read_jsonl(path: Path) -> list[Example]:
    """Examples of a JSON Lines file: objects with ``text``, or ``prompt`` and ``response``.

    Raises:
        TextDataError: a line that is not a JSON object with those string fields (its number).
    """
    out: list[Example] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TextDataError(f"cannot read `{path}`: {exc}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextDataError(f"{path}:{n}: not JSON ({exc.msg})") from None
        out.append(_example(obj, f"{path}:{n}"))
    if not out:
        raise TextDataError(f"`{path}` holds no example")
    return out


def _example(obj: Any, where: str) -> Example:
    if not isinstance(obj, dict):
        raise TextDataError(f"{where}: a line must be a JSON object, not {type(obj).__name__}")
    if "text" in obj and ("prompt" in obj or "response" in obj):
        raise TextDataError(f"{where}: give `text`, or `prompt` and `response`, not both")
    keys = ("text",) if "text" in obj else ("prompt", "response")
    for key in keys:
        if not isinstance(obj.get(key), str):
            got = "missing" if key not in obj else f"a {type(obj[key]).__name__}"
            raise TextDataError(
                f"{where}: `{key}` must be a string ({got}); a line holds `text`, or "
                "`prompt` and `response`"
            )
    if "text" in obj:
        return Example("", obj["text"])
    return Example(obj["prompt"], obj["response"])


def pydoc_examples() -> list[Example]:
    """The embedded corpus: the topics of Python's own help (``pydoc_data.topics``), in key
    order, one document each (~465k characters of English and code; no download)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it from the standard library
        raise TextDataError(
            "this Python has no `pydoc_data` (the `pydoc` text source reads it)"
        ) from None
    return [Example("", topics[k]) for k in sorted(topics)]


class TokenDataset(Dataset[tuple[dict[str, Tensor], Tensor, int]]):
    """Rows of token ids, attention masks and shifted labels; items ``(x, labels, index)``.

    Attributes:
        input_ids, attention_mask, labels: ``[N, T]`` each.
        prompt_lengths: ``[N]`` tokens before the first target of each row (``bos`` +
            prompt), or None for packed rows without ``prompt_tokens`` (several examples).
        tokenizer: The tokenizer that made them (generation views decode and pad with it).
    """

    def __init__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        tokenizer: Tokenizer,
        prompt_lengths: Tensor | None = None,
    ) -> None:
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels
        self.tokenizer = tokenizer
        self.prompt_lengths = prompt_lengths

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor, int]:
        x = {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}
        return x, self.labels[i], i

    @property
    def num_label_tokens(self) -> int:
        """Positions with a loss."""
        return int((self.labels != IGNORE).sum())


def _tokens(ex: Example, tok: Tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of an example and whether each is a target (response and eos)."""
    head = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok.encode(ex.prompt)
    body = [*tok.encode(ex.response), tok.eos_token_id]
    return head + body, [False] * len(head) + [True] * len(body)


def _row(ids: list[int], target: list[bool], seq_len: int, pad: int) -> tuple[list[int], ...]:
    """One row of ``seq_len`` positions from ``ids[:seq_len]`` (inputs, mask, labels)."""
    ids, target = ids[:seq_len], target[:seq_len]
    labels = [i if t else IGNORE for i, t in zip(ids, target, strict=True)]
    fill = seq_len - len(ids)
    return ids + [pad] * fill, [1] * len(ids) + [0] * fill, labels + [IGNORE] * fill


def tokenize(
    examples: Sequence[Example],
    tok: Tokenizer,
    seq_len: int,
    packing: bool,
    prompt_tokens: int = 0,
) -> TokenDataset:
    """The rows of a split (see the module's docstring); rows without a target are dropped.

    ``prompt_tokens = k`` makes the first ``k`` tokens of every row a prompt: no loss on them
    (``labels[:k]`` are ``-100``), and the on-policy and sequence-level views continue them;
    every row then has a prompt of at least ``k`` tokens (packed rows too).

    Raises:
        TextDataError: no row has a target (every prompt fills ``seq_len``, or no example).
    """
    encoded = [_tokens(ex, tok) for ex in examples]
    rows: list[tuple[list[int], ...]] = []
    prompts: list[int] = []
    if packing:
        stream = [i for ids, _ in encoded for i in ids]
        flags = [f for _, fl in encoded for f in fl]
        for start in range(0, len(stream), seq_len):
            end = start + seq_len
            flags[start] = False  # a row's first token has nothing before it to predict it
            rows.append(_row(stream[start:end], flags[start:end], seq_len, tok.pad_token_id))
    else:
        for ids, flags in encoded:
            rows.append(_row(ids, flags, seq_len, tok.pad_token_id))
            prompts.append(flags.index(True))
    if prompt_tokens:
        k = prompt_tokens
        rows = [(r[0], r[1], [IGNORE] * k + r[2][k:]) for r in rows]
        prompts = [max(k, p) for p in prompts] if prompts else [k] * len(rows)
    keep = [k for k, r in enumerate(rows) if any(v != IGNORE for v in r[2])]
    if not keep:
        raise TextDataError(
            f"no example has a response token within `seq_len = {seq_len}` positions"
        )
    cols = [torch.tensor([rows[k][c] for k in keep], dtype=torch.long) for c in range(3)]
    lengths = torch.tensor([prompts[k] for k in keep], dtype=torch.long) if prompts else None
    return TokenDataset(cols[0], cols[1], cols[2], tok, lengths)


def split_examples(
    examples: Sequence[Example], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Train/val/test by whole examples (documents), shuffled by ``seed``: a held-out document
    is never seen in training. A nonzero fraction keeps at least one example."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)

    def count(f: float) -> int:
        return max(1, round(f * len(order))) if f > 0 else 0

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= len(order):
        raise TextDataError(
            f"{len(order)} examples cannot give a validation and a test split and still train"
        )
    test = [examples[i] for i in sorted(order[:n_test])]
    val = [examples[i] for i in sorted(order[n_test : n_test + n_val])]
    train = [examples[i] for i in sorted(order[n_test + n_val :])]
    return train, val, test


def text_splits(
    examples: Sequence[Example],
    tok: Tokenizer,
    *,
    seq_len: int,
    packing: bool,
    prompt_tokens: int = 0,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Splits:
    """Tokenised train/val/test splits; ``num_classes`` is the vocabulary size and
    ``input_shape`` is ``(seq_len,)`` (zoo LMs are sized from both)."""
    parts = split_examples(examples, val_fraction, test_fraction, seed)
    train, val, test = (
        tokenize(p, tok, seq_len, packing, prompt_tokens) if p else None for p in parts
    )
    assert train is not None
    none = torch.zeros(0, seq_len, dtype=torch.long)
    empty = TokenDataset(none, none, none, tok)
    return Splits(
        train=train,
        val=val if val is not None else empty,
        test=test if test is not None else empty,
        num_classes=tok.vocab_size,
        input_shape=(seq_len,),
    )
