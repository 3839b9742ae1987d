"""The data of a run: splits from ``[data]``, the transfer set, and seeded loaders."""

from __future__ import annotations

import difflib
import hashlib
import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdspec.data import (
    IndexedSubset,
    Splits,
    digits_splits,
    exclude_classes,
    stratified_split,
    synthetic_splits,
    torchvision_dataset,
)
from kdspec.data.augment import ReplayedAugmentation
from kdspec.data.user import UserDataError, user_splits
from kdspec.data.vision import crop_flip, image_folder_splits
from kdspec.diagnostics import KdError
from kdspec.runtime.imports import (
    ImportRefused,
    allowed_imports,
    bindable,
    call_factory,
    code_fingerprint,
    import_factory,
)
from kdspec.runtime.runfile import Run

__all__ = ["RunData", "build_data", "eval_loader", "train_loader"]

_SOURCES = (
    "digits",
    "synthetic",
    "torchvision:CIFAR100",
    "torchvision:CIFAR10",
    "torchvision:ImageFolder",
    "import:package.module:name",
    "jsonl:path/to/file.jsonl",
    "pydoc",
)
_TEXT_KEYS = ("tokenizer", "seq_len", "packing", "prompt_tokens", "max_examples")


@dataclass(frozen=True)
class RunData:
    """Everything a run reads.

    Attributes:
        splits: train (all classes: what a teacher learns from), val and test.
        transfer: the training data of the distillation (``splits.train`` less
            ``[data].exclude_classes``).
        fingerprint: what determines the data besides ``[data]`` (the user's code behind an
            ``import:`` source, the file listing of an image folder): part of teacher-cache keys.
    """

    splits: Splits
    transfer: Dataset[Any]
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.splits.num_classes

    @property
    def in_channels(self) -> int:
        """Input channels (the first dimension of one input)."""
        return self.splits.input_shape[0]


def build_data(run: Run, allow_import: Iterable[str] = ()) -> RunData:
    """Build the splits named by ``[data]``.

    Args:
        run: The run.
        allow_import: Modules an ``import:`` data source may load (merged with the
            environment and user config, :func:`~kdspec.runtime.imports.allowed_imports`).

    Raises:
        KdError: KD502 for an unknown source, a missing package, missing files or unusable
            data; KD406/KD404 for an ``import:`` source that is not allowed or not found.
    """
    cfg = run.config.data
    src = cfg.source
    for key, value, only in (
        ("options", cfg.options, "import:"),
        ("image_size", cfg.image_size, "torchvision:ImageFolder"),
    ):
        if value and not src.startswith(only):
            raise KdError(
                [
                    run.diagnostic(
                        "KD502",
                        f"`[data] {key}` is only used by `{only}` sources, not by `{src}`",
                        ("data", key),
                        label="not used by this source",
                        help="remove it (see docs/runfile.md)",
                    )
                ]
            )
    _check_text_keys(run)
    fingerprint: dict[str, Any] = {}
    if is_text_source(src):
        splits, fingerprint = _text_splits(run)
    elif src.startswith("import:"):
        splits = _import_splits(run, allow_import)
        module = sys.modules.get(src.partition(":")[2].partition(":")[0])
        types = [type(d) for d in (splits.train, splits.val, splits.test)]
        fingerprint["code"] = code_fingerprint(
            [module, *(sys.modules.get(c.__module__) for t in types for c in t.__mro__)]
        )
    elif src == "torchvision:ImageFolder":
        splits = _image_folder_splits(run)
        fingerprint["files"] = _listing(run.resolve_path(str(cfg.root)))
    elif src == "digits":
        splits = digits_splits(cfg.seed, cfg.val_fraction, cfg.test_fraction)
    elif src == "synthetic":
        splits = synthetic_splits(
            cfg.n,
            cfg.num_classes,
            tuple(cfg.input_shape),
            cfg.seed,
            cfg.val_fraction,
            cfg.test_fraction,
        )
    elif src in ("torchvision:CIFAR10", "torchvision:CIFAR100"):
        splits = _torchvision_splits(run)
    else:
        close = [s for s in _SOURCES if s.partition(":")[0] == src] or (
            difflib.get_close_matches(src, _SOURCES, n=1)
        )
        raise KdError(
            [
                run.diagnostic(
                    "KD502",
                    f"unknown data source `{src}`",
                    ("data", "source"),
                    label="unknown source",
                    help=(f"did you mean `{close[0]}`? " if close else "")
                    + "sources: "
                    + ", ".join(f"`{s}`" for s in _SOURCES),
                )
            ]
        )
    transfer = exclude_classes(splits.train, cfg.exclude_classes) if cfg.exclude_classes else None
    if transfer is not None and len(transfer) == 0:  # type: ignore[arg-type]
        raise KdError(
            [
                run.diagnostic(
                    "KD501",
                    f"`exclude_classes` removes every class of the {splits.num_classes}: the "
                    "student would see no data",
                    ("data", "exclude_classes"),
                    label="excludes everything",
                    help="keep at least one class in the transfer set",
                )
            ]
        )
    transfer = transfer if transfer is not None else splits.train
    if run.config.output_cache.store != "off" and cfg.augment and src in _AUGMENTED:
        transfer = _replayed_transfer(run)  # its parameters are part of output-cache keys
    return RunData(splits, transfer, fingerprint)


# Sources whose `[data] augment` randomly crops and flips the training images.
_AUGMENTED = ("torchvision:CIFAR10", "torchvision:CIFAR100", "torchvision:ImageFolder")


def _replayed_transfer(run: Run) -> ReplayedAugmentation:
    """The transfer set with its crop + flip replayed from stored parameters (FKD-style), so
    that a frozen teacher's outputs can be cached per ``(sample, replay)``."""
    cfg = run.config.data
    plain = build_data(run.with_updates(data={"augment": False}))
    augment = crop_flip(cfg.source, cfg.image_size)
    return ReplayedAugmentation(plain.transfer, augment, run.config.output_cache.replays, cfg.seed)


def is_text_source(source: str) -> bool:
    """Whether a ``[data] source`` yields token data (``jsonl:PATH`` or ``pydoc``)."""
    return source == "pydoc" or source.startswith("jsonl:")


def _check_text_keys(run: Run) -> None:
    """KD502 for a text-only key written for an image source, or `exclude_classes` on text."""
    cfg = run.config.data
    text = is_text_source(cfg.source)
    defaults = type(cfg).model_fields
    bad = [k for k in _TEXT_KEYS if not text and getattr(cfg, k) != defaults[k].default]
    if text and cfg.exclude_classes:
        bad.append("exclude_classes")
    if bad:
        only = "image and tabular sources" if text else "text sources (`jsonl:`, `pydoc`)"
        raise KdError(
            [
                run.diagnostic(
                    "KD502",
                    f"`[data] {bad[0]}` is only used by {only}, not by `{cfg.source}`",
                    ("data", bad[0]),
                    label="not used by this source",
                    help="remove it (see docs/runfile.md)",
                )
            ]
        )


def _text_splits(run: Run) -> tuple[Splits, dict[str, Any]]:
    from kdspec.data.text import TextDataError, pydoc_examples, read_jsonl, text_splits

    cfg = run.config.data
    tok, tok_key = _tokenizer(run)
    try:
        if cfg.source == "pydoc":
            examples, where = pydoc_examples(), "pydoc"
        else:
            path = run.resolve_path(cfg.source.partition(":")[2])
            examples, where = read_jsonl(path), str(path)
        examples = examples[: cfg.max_examples]
        splits = text_splits(
            examples,
            tok,
            seq_len=cfg.seq_len,
            packing=cfg.packing,
            prompt_tokens=cfg.prompt_tokens,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
        )
    except TextDataError as exc:
        raise _fail(run, f"data source `{cfg.source}`: {exc}") from None
    digest = hashlib.sha256(repr([(e.prompt, e.response) for e in examples]).encode())
    return splits, {"text": digest.hexdigest(), "source": where, "tokenizer": tok_key}


def _tokenizer(run: Run) -> tuple[Any, str]:
    """The text's tokenizer and a key for caches: `[data] tokenizer`, or with `auto` the
    tokenizer of the `hf:` models (KD502 when they differ), else the built-in bytes."""
    from kdspec.data.text import ByteTokenizer

    name = run.config.data.tokenizer
    if name == "byte":
        return ByteTokenizer(), "byte"
    if name == "auto":
        folders = sorted({v[3:] for v in run.config.models.values() if v.startswith("hf:")})
        if not folders:
            return ByteTokenizer(), "byte"
        loaded = [_hf_tokenizer(run, f) for f in folders]
        vocabs = [sorted(t.tok.get_vocab().items()) for t in loaded]
        if any(v != vocabs[0] for v in vocabs[1:]):
            raise KdError(
                [
                    run.diagnostic(
                        "KD502",
                        "the `hf:` models do not share a tokenizer ("
                        + ", ".join(f"`{f}`" for f in folders)
                        + "): token ids of one mean other tokens to the other",
                        ("data", "tokenizer"),
                        label="ambiguous tokenizer",
                        help="distil between models of one vocabulary, or name one with "
                        '`tokenizer = "hf:PATH"` if their vocabularies truly agree',
                    )
                ]
            )
        return loaded[0], f"hf:{folders[0]}"
    if name.startswith("hf:"):
        return _hf_tokenizer(run, name[3:]), name
    raise KdError(
        [
            run.diagnostic(
                "KD501",
                f"unknown tokenizer `{name}`",
                ("data", "tokenizer"),
                label="unknown tokenizer",
                help='use `"auto"`, `"byte"` or `"hf:PATH"` (a local tokenizer folder)',
            )
        ]
    )


def _hf_tokenizer(run: Run, folder: str) -> Any:
    from kdspec.data.text import HFTokenizer, TextDataError

    try:
        import transformers
    except ImportError:
        raise _fail(
            run,
            f"the tokenizer of `hf:{folder}` needs `transformers`, which is not installed",
            "pip install 'kdspec[hf]', or use the built-in tokenizer: `tokenizer = \"byte\"`",
        ) from None
    path = run.resolve_path(folder)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
        return HFTokenizer(tok)
    except (OSError, ValueError, TextDataError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KdError(
            [
                run.diagnostic(
                    "KD502",
                    f"no usable tokenizer in `{path}`: {first}",
                    ("data", "tokenizer"),
                    label="no tokenizer",
                    help='save one there with `tokenizer.save_pretrained`, or use `"byte"`',
                )
            ]
        ) from None


def _listing(root: Path) -> str:
    """sha256 of every file's path and size under ``root`` (a changed image folder retrains)."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            h.update(f"{path.relative_to(root)}\t{path.stat().st_size}\n".encode())
    return h.hexdigest()


def _fail(run: Run, message: str, help_text: str | None = None, code: str = "KD502") -> KdError:
    return KdError(
        [run.diagnostic(code, message, ("data", "source"), label=message, help=help_text)]
    )


def _import_splits(run: Run, allow_import: Iterable[str]) -> Splits:
    cfg = run.config.data
    spec = cfg.source.partition(":")[2]
    try:
        factory: Any = import_factory(spec, allowed_imports(allow_import), Dataset, "data")
    except ImportRefused as exc:
        raise _fail(run, exc.message, exc.help, exc.code) from None
    candidates: dict[str, Any] = {"seed": cfg.seed}
    if cfg.root is not None:
        candidates["root"] = str(run.resolve_path(cfg.root))
    options = dict(cfg.options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    args = {**bindable(factory, candidates), **options}
    try:
        if inspect.isclass(factory) and "split" in params:
            result: Any = {
                s: call_factory(factory, {**args, "split": s}, spec, "KD502")
                for s in ("train", "val", "test")
            }
        elif inspect.isclass(factory) and "train" in params:
            result = tuple(
                call_factory(factory, {**args, "train": t}, spec, "KD502") for t in (True, False)
            )
        else:
            result = call_factory(factory, args, spec, "KD502")
    except ImportRefused as exc:
        help_text = exc.help
        if exc.bad_arguments:
            help_text = (
                "`[data] options` are passed as keywords; `root` and `seed` are passed when "
                "the factory takes them"
            )
        key = "options" if exc.bad_arguments and options else "source"
        raise KdError(
            [run.diagnostic("KD502", exc.message, ("data", key), label=exc.message, help=help_text)]
        ) from None
    try:
        return user_splits(
            result, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed
        )
    except UserDataError as exc:
        raise _fail(run, f"data source `{cfg.source}`: {exc}") from None


def _image_folder_splits(run: Run) -> Splits:
    cfg = run.config.data
    if cfg.root is None:
        raise _fail(
            run,
            "data source `torchvision:ImageFolder` needs `root`, the folder of images",
            'add `root = "path/to/images"` to `[data]` (class subfolders, optionally under '
            "`train/`, `val/`, `test/`)",
        )
    try:
        return image_folder_splits(
            run.resolve_path(cfg.root),
            image_size=cfg.image_size,
            augment=cfg.augment,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
        )
    except (RuntimeError, UserDataError) as exc:
        raise _fail(run, f"cannot load `torchvision:ImageFolder`: {exc}") from None


def _torchvision_splits(run: Run) -> Splits:
    cfg = run.config.data
    name = cfg.source.partition(":")[2]
    if cfg.root is None:
        raise KdError(
            [
                run.diagnostic(
                    "KD502",
                    f"data source `{cfg.source}` needs `root`, the folder holding the files",
                    ("data", "source"),
                    help='add `root = "path/to/data"` to `[data]` (kdspec never downloads)',
                )
            ]
        )
    root = str(run.resolve_path(cfg.root))
    try:
        train_aug = torchvision_dataset(name, root, train=True, augment=cfg.augment)
        train_plain = torchvision_dataset(name, root, train=True, augment=False)
        test = torchvision_dataset(name, root, train=False)
    except (RuntimeError, ValueError) as exc:
        raise KdError(
            [run.diagnostic("KD502", f"cannot load `{cfg.source}`: {exc}", ("data", "source"))]
        ) from None
    targets = torch.as_tensor(train_plain.targets)
    train_idx, val_idx, _ = stratified_split(targets, cfg.val_fraction, 0.0, cfg.seed)
    num_classes = int(targets.max()) + 1
    x0 = test[0][0]
    return Splits(
        train=IndexedSubset(train_aug, train_idx.tolist(), targets[train_idx]),
        val=IndexedSubset(train_plain, val_idx.tolist(), targets[val_idx]),
        test=test,
        num_classes=num_classes,
        input_shape=tuple(x0.shape),
    )


def train_loader(
    dataset: Dataset[Any], batch_size: int, seed: int, num_workers: int = 0
) -> DataLoader[Any]:
    """A shuffling loader whose order depends on ``seed`` only (not on ``num_workers``).

    The generator is exposed as ``loader.generator`` so a checkpoint can save its state.
    """
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=gen,
        num_workers=num_workers,
        pin_memory=num_workers > 0 and torch.cuda.is_available(),
        drop_last=drops_a_lone_example(dataset, batch_size),
    )


def drops_a_lone_example(dataset: Dataset[Any], batch_size: int) -> bool:
    """Whether the last training batch would hold a single example, and is dropped.

    A batch of one has no relations between samples (a relation loss divides 0 by 0) and no
    batch statistics (batch norm fails or learns nothing), so it is left out of each epoch.
    """
    n = len(dataset)  # type: ignore[arg-type]
    return batch_size > 1 and n > 1 and n % batch_size == 1


def eval_loader(dataset: Dataset[Any], batch_size: int, num_workers: int = 0) -> DataLoader[Any]:
    """A loader in dataset order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
