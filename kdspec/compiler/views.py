"""Data views (modifications) and subsets (partitions) at run time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

import torch

from kdspec.ir import models as ir
from kdspec.ir.evaluate import evaluate
from kdspec.vocabulary.functions import GENERATED_VIEWS


class SameClassSampler:
    """Draws, for every sample of a batch, another training sample of the same class (CS-KD)."""

    def __init__(self, dataset: Any, seed: int = 0):
        self.dataset = dataset
        labels = _labels_of(dataset)
        self.by_class: dict[int, torch.Tensor] = {}
        for c in labels.unique().tolist():
            self.by_class[int(c)] = (labels == c).nonzero().flatten()
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        picks = []
        for y in labels.tolist():
            pool = self.by_class[int(y)]
            picks.append(int(pool[torch.randint(len(pool), (1,), generator=self.generator)]))
        items = [self.dataset[i][0] for i in picks]
        return torch.stack(items).to(x)


def _labels_of(dataset: Any) -> torch.Tensor:
    for attr in ("targets", "y", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return torch.as_tensor(value)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def make_view(
    part: ir.DataPart | None, params: dict[str, ir.Expr], train_data: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(x, labels) -> x'`` for a named view (unbound views leave x as is)."""
    if part is None or part.func in (None, "clean"):
        return lambda x, y: x
    kw: dict[str, Any] = {k: evaluate(v, params) for k, v in part.kwargs.items()}
    copies = int(kw.pop("k", 4 if part.func == "rotations" else 1))
    if part.func == "rotations":
        return _rotations(copies)
    one = _one_view(part, kw, train_data)
    if copies == 1:
        return one
    # k views of each sample, view-major: view 0 of every sample, then view 1, ...
    return lambda x, y: torch.cat([one(x, y) for _ in range(copies)])


def _rotations(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if k not in (1, 2, 3, 4):
        raise ValueError(f"`rotations(k={k})`: k is 1, 2, 3 or 4 quarter turns")

    def rotate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"`rotations` turns square images, and the input is {list(x.shape[1:])}"
            )
        return torch.cat([torch.rot90(x, i, dims=(-2, -1)) for i in range(k)])

    return rotate


def _one_view(
    part: ir.DataPart, kw: dict[str, Any], train_data: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if part.func == "gaussian_noise":
        std = float(kw.get("std", 0.1))
        return lambda x, y: x + std * torch.randn_like(x)
    if part.func == "augment":
        strength = float(kw.get("strength", 1.0))

        def augment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if x.dim() < 4:
                return x + 0.05 * strength * torch.randn_like(x)
            shift = max(1, round(strength))
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,)))
            out = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            return out + 0.05 * strength * torch.randn_like(out)

        return augment
    if part.func in ("on_policy", "teacher_generations"):
        return _generated_view(part.func, kw, train_data)  # type: ignore[return-value]
    if part.func == "same_class":
        if train_data is None:
            raise ValueError("the `same_class` view needs the training data")
        return SameClassSampler(train_data)
    raise ValueError(f"unknown view function `{part.func}`")


def _generated_view(func: str, kw: dict[str, Any], train_data: Any) -> BatchRewrite:
    if train_data is not None and getattr(train_data, "prompt_lengths", 0) is None:
        raise ValueError(
            f"`{func}` continues each row's prompt, but packed rows have none: set "
            "`[data] packing = false` (one example per row) or `prompt_tokens = N`"
        )
    if train_data is not None and not hasattr(train_data, "prompt_lengths"):
        raise ValueError(f"`{func}` needs token data (a `jsonl:` or `pydoc` source)")
    new = int(kw.get("max_new_tokens", 32))
    view: BatchRewrite
    if func == "on_policy":
        view = OnPolicy(float(kw.get("lmbda", 0.5)), new, float(kw.get("temperature", 1.0)))
    else:
        view = TeacherGenerations(new, float(kw.get("temperature", 0.0)))
    tok = getattr(train_data, "tokenizer", None)
    for name in ("eos_token_id", "pad_token_id"):
        if getattr(tok, name, None) is not None:
            view.special[name] = int(getattr(tok, name))
    return view


def make_subset(
    part: ir.DataPart, params: dict[str, ir.Expr]
) -> Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]:
    """A function ``(labels, index) -> bool mask`` selecting a subset's rows in a batch."""
    if part.func in ("exclude_classes", "only_classes"):
        classes: list[int] = []
        for a in part.args:
            v = evaluate(a, params)
            classes.extend(int(c) for c in (v if isinstance(v, list) else [v]))  # type: ignore[call-overload]
        only = part.func == "only_classes"

        def by_class(labels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
            assert labels is not None
            hit = torch.isin(labels, torch.tensor(classes, device=labels.device))
            return hit if only else ~hit

        return by_class
    if part.func is None:  # bound by the run; unbound, the subset is the whole batch

        def everything(labels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
            ref = labels if labels is not None else index
            assert ref is not None
            return torch.ones(len(ref), dtype=torch.bool, device=ref.device)

        return everything
    if part.func == "fraction":
        p = float(evaluate(part.kwargs["p"], params)) if "p" in part.kwargs else 1.0  # type: ignore[arg-type]

        def by_index(labels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
            if index is None:
                raise ValueError("a `fraction` subset needs sample indices in the batch")
            # A fixed pseudo-random subset: Knuth's multiplicative hash of the sample index.
            h = (index.long() * 2654435761) % (2**32)
            return (h.double() / 2**32) < p

        return by_index
    raise ValueError(f"unknown subset function `{part.func}`")


# -- generated data: views that rewrite the whole batch of token data ---------------------------

IGNORE = -100  # label of a position without loss (the token-data batch contract)


class BatchRewrite:
    """A view that replaces the batch's responses with generated ones (inputs and labels).

    Every role sees it (the compiler checks), so the masks and labels every term reads are the
    rewritten ones. ``role_kind`` is the kind of role whose ``generate`` is called: the
    method's first role of that kind. A row's prompt is its tokens before its first label
    (token data, labels unshifted as in Hugging Face: ``-100`` where there is no loss).
    """

    role_kind = GENERATED_VIEWS["on_policy"]

    def __init__(self, max_new_tokens: int, temperature: float) -> None:
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        # the data's tokenizer's ids (set from the training data); else the model's own config
        self.special: dict[str, int] = {}

    def rows(self, labels: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Bool ``[B]``: the rows whose response is replaced."""
        raise NotImplementedError

    def __call__(
        self, x: Any, labels: torch.Tensor, index: torch.Tensor | None, model: Any
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The rewritten ``(x, labels)``; the chosen rows hold prompt + ``model``'s sample."""
        if not isinstance(x, dict) or "input_ids" not in x:
            raise ValueError("generated views need token data (`input_ids`, as from `jsonl:`)")
        ids = x["input_ids"]
        chosen = self.rows(labels, index)
        prompts = prompt_lengths(labels)
        fulls = self.generated(ids, prompts, chosen, index, model)
        return rebuild(x, labels, prompts, fulls, _ids(model, self.special)[1])

    def generated(
        self,
        ids: torch.Tensor,
        prompts: torch.Tensor,
        chosen: torch.Tensor,
        index: torch.Tensor | None,
        model: Any,
    ) -> dict[int, torch.Tensor]:
        """Row -> prompt + continuation (up to and with the first end token)."""
        return sample_continuations(
            model, ids, prompts, chosen, self.max_new_tokens, self.temperature, self.special
        )


class OnPolicy(BatchRewrite):
    """GKD's on-policy data: each row's response is, with probability ``lmbda``, replaced by the
    student's sample from the row's prompt (Agarwal et al. 2024; TRL's ``GKDTrainer``)."""

    def __init__(self, lmbda: float, max_new_tokens: int, temperature: float) -> None:
        super().__init__(max_new_tokens, temperature)
        self.lmbda = float(lmbda)

    def rows(self, labels: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """A Bernoulli(``lmbda``) draw per row from the global generator (seeded by the run)."""
        return (torch.rand(len(labels)) < self.lmbda).to(labels.device)


class GenerationStore(Protocol):
    """Where :class:`TeacherGenerations` keeps its generations between runs (the run's disk
    cache, :class:`kdspec.runtime.generations.GenerationFile`)."""

    def load(self, view: TeacherGenerations, model: Any) -> dict[int, torch.Tensor]: ...

    def save(
        self, view: TeacherGenerations, model: Any, samples: dict[int, torch.Tensor]
    ) -> None: ...


class TeacherGenerations(BatchRewrite):
    """Sequence-level KD (Kim & Rush 2016): every response is replaced by the teacher's own
    generation from the row's prompt (greedy at ``temperature = 0``), generated once per
    training sample (keyed by the batch's sample index) and reused every epoch.

    Sampling draws from a generator seeded by ``seed`` and the batch's sample indices, not from
    the global one: a batch's generations do not depend on what ran before, and reading them
    from ``store`` (a disk cache, set by the run) leaves the rest of the run's randomness as it
    would have been. ``store`` is read at the first batch and written once every one of
    ``num_samples`` samples has its generation (and at :meth:`flush`).
    """

    role_kind = GENERATED_VIEWS["teacher_generations"]

    def __init__(self, max_new_tokens: int, temperature: float) -> None:
        super().__init__(max_new_tokens, temperature)
        self.cache: dict[int, torch.Tensor] = {}
        self.seed = 0
        self.store: GenerationStore | None = None
        self.num_samples: int | None = None
        self._loaded = False
        self._unsaved = False

    def keep(self, store: GenerationStore | None, seed: int, num_samples: int | None) -> None:
        """Seed the generations with the run's ``seed`` and keep them in ``store``; what was
        generated before (the compiler's example batch) is forgotten."""
        self.store, self.seed, self.num_samples = store, int(seed), num_samples
        self.cache.clear()
        self._loaded = self._unsaved = False

    def key_fields(self) -> dict[str, Any]:
        """What determines the generations besides the teacher and the data."""
        return {
            "view": "teacher_generations",
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "special": dict(sorted(self.special.items())),
            "seed": self.seed,
        }

    def rows(self, labels: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Every row."""
        return torch.ones(len(labels), dtype=torch.bool, device=labels.device)

    def generated(
        self,
        ids: torch.Tensor,
        prompts: torch.Tensor,
        chosen: torch.Tensor,
        index: torch.Tensor | None,
        model: Any,
    ) -> dict[int, torch.Tensor]:
        """Cached generations by sample index; new samples are generated (and stored) now."""
        if index is None:
            raise ValueError("`teacher_generations` needs sample indices in the batch")
        if self.store is not None and not self._loaded:
            self.cache.update(self.store.load(self, model))
            self._loaded = True
        keys = [int(k) for k in index.tolist()]
        todo = torch.tensor([k not in self.cache for k in keys], device=ids.device)
        if bool((todo & chosen).any()):
            with torch.random.fork_rng(devices=_devices(ids)):
                torch.manual_seed(_batch_seed(self.seed, keys))
                new = sample_continuations(
                    model,
                    ids,
                    prompts,
                    todo & chosen,
                    self.max_new_tokens,
                    self.temperature,
                    self.special,
                )
            for i, full in new.items():
                self.cache[keys[i]] = full.cpu()
            self._unsaved = True
            if self.num_samples is not None and len(self.cache) >= self.num_samples:
                self.flush(model)
        return {i: self.cache[keys[i]].to(ids.device) for i in range(len(keys)) if chosen[i]}

    def flush(self, model: Any) -> None:
        """Write the generations made since the last write to ``store`` (if any)."""
        if self.store is not None and self._unsaved:
            self.store.save(self, model, self.cache)
        self._unsaved = False


def _batch_seed(seed: int, keys: list[int]) -> int:
    """A generator seed from the run's seed and a batch's sample indices."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, keys))}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _devices(t: torch.Tensor) -> list[int]:
    """The CUDA devices whose generators a sample may draw from (none on a CPU)."""
    return [t.device.index or 0] if t.device.type == "cuda" else []


def prompt_lengths(labels: torch.Tensor) -> torch.Tensor:
    """``[B]`` tokens before each row's response: the position of its first label."""
    has = labels != IGNORE
    if not bool(has.any(1).all()):
        raise ValueError("a row of the batch has no label token: no response to replace")
    lengths = has.int().argmax(1)
    if not bool((lengths > 0).all()):
        raise ValueError("a row's first token is a label: there is no prompt to continue")
    return lengths


def sample_continuations(
    model: Any,
    ids: torch.Tensor,
    prompts: torch.Tensor,
    chosen: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    special: dict[str, int] | None = None,
) -> dict[int, torch.Tensor]:
    """Row -> its prompt and ``model.generate``'s continuation (cut after the end token).

    ``special`` holds the data's ``eos_token_id`` and ``pad_token_id`` (the tokenizer's);
    missing ones come from the model's (generation) config.

    Rows with the same prompt length are generated together, shortest prompts first, so no
    prompt needs padding; the model runs in eval mode and is restored.
    """
    out: dict[int, torch.Tensor] = {}
    eos, pad = _ids(model, special or {})
    was = model.training
    model.eval()
    try:
        for length in sorted(set(prompts[chosen].tolist())):
            rows = (chosen & (prompts == length)).nonzero().flatten().tolist()
            prompt = ids[rows, :length]
            kw = _generate_kwargs(model, prompt, max_new_tokens, temperature, eos, pad)
            seq = model.generate(**kw)
            for r, full in zip(rows, seq, strict=True):
                out[r] = _cut(full, length, eos, pad)
    finally:
        model.train(was)
    return out


def _generate_kwargs(
    model: Any,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos: int | None,
    pad: int,
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "input_ids": prompt,
        "attention_mask": torch.ones_like(prompt),
        "max_new_tokens": max_new_tokens,
        "do_sample": temperature > 0,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    if temperature > 0:
        kw["temperature"] = temperature
        if hasattr(model, "generation_config"):  # a transformers model: sample the full softmax
            kw["top_k"], kw["top_p"] = 0, 1.0
    return kw


def _cut(full: torch.Tensor, start: int, eos: int | None, pad: int) -> torch.Tensor:
    """The prompt and continuation up to and with the first ``eos`` (padding after it cut)."""
    if eos is not None:
        hits = (full[start:] == eos).nonzero()
        if len(hits):
            return full[: start + int(hits[0]) + 1]
    return full


def _special(model: Any, name: str) -> int | None:
    config = getattr(model, "generation_config", None) or getattr(model, "config", None)
    value = getattr(model, name, None)
    if value is None and config is not None:
        value = getattr(config, name, None)
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else int(value)


def _ids(model: Any, special: dict[str, int]) -> tuple[int | None, int]:
    """The end and padding ids: the data's tokenizer's, else the model's config's (padding
    falls back to the end token, then 0; padded positions carry no label either way)."""
    eos = special.get("eos_token_id", _special(model, "eos_token_id"))
    pad = special.get("pad_token_id", _special(model, "pad_token_id"))
    if pad is None:
        pad = eos
    return eos, 0 if pad is None else pad


def rebuild(
    x: dict[str, torch.Tensor],
    labels: torch.Tensor,
    prompts: torch.Tensor,
    fulls: dict[int, torch.Tensor],
    pad: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The batch with rows ``fulls`` (prompt + response tokens) in place of the originals:
    the labels are the response tokens (``-100`` on the prompt); the batch widens to the
    longest row, padded on the right."""
    ids, mask = x["input_ids"], x["attention_mask"]
    width = max([ids.shape[1], *(len(f) for f in fulls.values())])
    new_ids = torch.full((len(ids), width), pad, dtype=ids.dtype, device=ids.device)
    new_mask = torch.zeros_like(new_ids)
    new_labels = torch.full_like(new_ids, IGNORE)
    t = ids.shape[1]
    new_ids[:, :t], new_mask[:, :t], new_labels[:, :t] = ids, mask, labels
    for i, full in fulls.items():
        n, p = len(full), int(prompts[i])
        new_ids[i], new_mask[i], new_labels[i] = pad, 0, IGNORE
        new_ids[i, :n], new_mask[i, :n] = full, 1
        new_labels[i, p:n] = full[p:]
    return {**x, "input_ids": new_ids, "attention_mask": new_mask}, new_labels
