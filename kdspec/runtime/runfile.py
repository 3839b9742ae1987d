"""Run files: the TOML that binds a method spec to models, weights, data and a training recipe.

A method spec (``.kd``) says *what* is distilled; a run file says *with what*. Both stay
separate so one spec runs on digits, CIFAR-100 or a text task unchanged. Every section is
optional; without a run file the embedded digits job runs (:func:`default_run`).

Example:
    >>> run = parse_run('''
    ... [models]
    ... t = "zoo:resnet32x4"
    ... s = "zoo:resnet8x4"
    ... [train]
    ... epochs = 240
    ... ''', "run.toml")
    >>> run.config.models["s"], run.config.train.epochs
    ('zoo:resnet8x4', 240)
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kdspec.diagnostics import Diagnostic, KdError, error
from kdspec.source import MAX_SOURCE_BYTES, SourceFile, Span, decode_source, read_regular_file

__all__ = [
    "DEFAULT_MODELS",
    "DataConfig",
    "OutputCacheConfig",
    "Run",
    "RunConfig",
    "TeacherConfig",
    "TrainConfig",
    "default_run",
    "load_run",
    "parse_run",
]

# Models of the embedded digits job, by role kind (used when a run has no [models] section).
# Measured on 2 CPU cores: cnn_small reaches ~99% test top-1 in 20 epochs (a few seconds);
# cnn_tiny alone reaches ~85-90% and gains several points from the teacher's soft targets.
DEFAULT_MODELS: dict[str, str] = {
    "teacher": "zoo:cnn_small",
    "assistant": "zoo:mlp",
    "student": "zoo:cnn_tiny",
    "peer": "zoo:cnn_tiny",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Sizes beyond these are mistakes (`n = 1e9`, `epochs = 10^9`), refused before anything runs.
MAX_EPOCHS = 100_000
MAX_SAMPLES = 10_000_000
MAX_CLASSES = 1_000_000
MAX_BATCH = 1 << 16
MAX_SIDE = 4096
MAX_SYNTHETIC_VALUES = 1 << 28  # 1 GiB of float32


class DataConfig(_Section):
    """``[data]``: where the examples come from and how they are split and batched.

    Attributes:
        source: ``digits`` (embedded), ``synthetic`` (random, learnable),
            ``torchvision:CIFAR100`` / ``torchvision:CIFAR10`` (read from ``root``),
            ``torchvision:ImageFolder`` (class folders under ``root``) or
            ``import:package.module:name`` (the user's own datasets; see docs/runfile.md),
            ``jsonl:PATH`` (text: ``text`` or ``prompt``/``response`` per line) or ``pydoc``
            (the embedded text: Python's own help topics).
        root: Directory of the data (never downloaded).
        options: Keyword arguments of an ``import:`` data factory.
        num_workers: Loader worker processes (0: load in the training process).
        image_size: Side to which ``torchvision:ImageFolder`` images are resized.
        seed: Seed of the train/val/test split (and of synthetic data).
        val_fraction: Share of the training data held out for validation (per class).
        test_fraction: Share held out for test (digits and synthetic; torchvision has its own).
        exclude_classes: Labels removed from the transfer set (the data the student sees).
        batch_size: Training batch size.
        eval_batch_size: Batch size for evaluation.
        augment: Random crop + flip on torchvision training images.
        n: Number of synthetic samples.
        num_classes: Number of synthetic classes.
        input_shape: Shape of one synthetic input.
        tokenizer: text only: ``auto`` (the ``hf:`` models' tokenizer, else ``byte``),
            ``byte`` (built in) or ``hf:PATH`` (a local tokenizer folder).
        seq_len: text only: positions per row.
        packing: text only: concatenate examples into full rows (else one padded row each).
        prompt_tokens: text only: the first N tokens of every row are a prompt (no loss).
        max_examples: text only: read the first N examples (documents) only.
    """

    source: str = "digits"
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    num_workers: int = Field(0, ge=0)
    image_size: int | None = Field(None, ge=1)
    seed: int = 0
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    exclude_classes: list[int] = Field(default_factory=list)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH)
    augment: bool = True
    n: int = Field(512, ge=1, le=MAX_SAMPLES)
    num_classes: int = Field(10, ge=1, le=MAX_CLASSES)
    input_shape: list[Annotated[int, Field(ge=1, le=MAX_SIDE)]] = Field(
        default_factory=lambda: [1, 8, 8], min_length=1, max_length=4
    )
    tokenizer: str = "auto"
    seq_len: int = Field(128, ge=2, le=MAX_SIDE)
    packing: bool = True
    prompt_tokens: int = Field(0, ge=0, le=MAX_SIDE)
    max_examples: int | None = Field(None, ge=3)

    @model_validator(mode="after")
    def _prompt_fits_in_a_row(self) -> DataConfig:
        if self.prompt_tokens >= self.seq_len:
            raise ValueError(
                f"prompt_tokens ({self.prompt_tokens}) must be less than seq_len ({self.seq_len})"
            )
        return self

    @model_validator(mode="after")
    def _synthetic_fits_in_memory(self) -> DataConfig:
        values = self.n * math.prod(self.input_shape)
        if self.source == "synthetic" and values > MAX_SYNTHETIC_VALUES:
            raise ValueError(
                f"synthetic data of n = {self.n} inputs of shape {self.input_shape} is "
                f"{values:,} numbers, more than the {MAX_SYNTHETIC_VALUES:,} allowed"
            )
        return self


class TrainConfig(_Section):
    """``[train]``: the optimisation recipe of the distillation run.

    ``milestones`` are epochs of the whole run; a method with several stages gets a fresh
    optimizer per stage, with the schedule compressed to the stage's length (see
    :mod:`kdspec.runtime.trainer`). ``metric`` is what train, compare and the summary report
    (and what ``eval = "best_val"`` selects by): see :mod:`kdspec.runtime.metrics`.
    """

    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = True
    schedule: Literal["step", "cosine", "none"] = "cosine"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    amp: bool | Literal["off", "bf16", "fp16"] = False  # see kdspec.runtime.accel
    compile: bool = False  # torch.compile the roles' networks (see docs/performance.md)
    seed: int = 0
    eval: Literal["last", "best_val"] = "last"
    metric: Literal["top1", "top5", "perplexity", "teacher_cosine"] = "top1"


class TeacherConfig(TrainConfig):
    """``[teacher]``: how a teacher without weights is pre-trained (cross-entropy only).

    ``exclude_classes`` removes labels from the teacher's own training data (default: none,
    so a teacher sees every class even when the transfer set omits some).
    """

    exclude_classes: list[int] = Field(default_factory=list)
    pretrain: bool = True  # false: a frozen teacher must come with [weights] (else KD407)
    metric: Literal["top1"] = "top1"  # a teacher is pre-trained and cached on top-1
    # Part of the teacher-cache key: change it to retrain when something the code fingerprint
    # cannot see has changed (a file the model reads, code outside the user's modules).
    code_version: str | None = None


class OutputCacheConfig(_Section):
    """``[output_cache]``: frozen teachers' tapped outputs computed once per sample, reused.

    ``store`` is ``off``, ``memory`` or ``disk`` (one memory-mapped file per cache under
    ``folder``, default ``<cache dir>/outputs``, reused by later runs with the same teacher
    weights, taps, data and augmentation); ``dtype = "fp16"`` halves the size and ``topk = k``
    keeps the k largest logits per row (the error of both is reported); ``max_mb`` bounds a
    cache's size; ``replays`` is the number of augmentation parameter sets kept per sample when
    ``[data] augment`` randomly crops and flips (see docs/runfile.md).
    """

    store: Literal["off", "memory", "disk"] = "off"
    dtype: Literal["fp32", "fp16"] = "fp32"
    topk: int = Field(0, ge=0)
    max_mb: float | None = Field(None, gt=0)
    replays: int = Field(4, ge=1, le=1024)
    folder: str | None = None


ParamValue = bool | int | float | str


class RunConfig(_Section):
    """A whole run file.

    ``[models]`` maps roles to sources; ``[model_options]`` gives a role's architecture
    keywords (``s = { hidden = [64, 64] }`` for ``zoo:mlp``); ``[weights]`` maps roles to
    checkpoints; ``[pretrained]`` says which sources bring trained weights (an ``import:``
    factory returning a trained model); ``[params]`` overrides method parameters.
    """

    models: dict[str, str] = Field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    weights: dict[str, str] = Field(default_factory=dict)
    pretrained: dict[str, bool] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    output_cache: OutputCacheConfig = Field(default_factory=OutputCacheConfig)
    params: dict[str, ParamValue] = Field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A validated run: the settings, and the TOML they came from (for diagnostics).

    Attributes:
        config: The validated settings.
        source: The TOML text, or None for the built-in default run.
        base_dir: Relative paths in the run (weights, data root) are resolved against it.
    """

    config: RunConfig
    source: SourceFile | None = None
    base_dir: Path = Path(".")

    def span(self, *keys: str | int) -> Span | None:
        """Where a setting is written in the TOML (the key), if it is written at all."""
        return key_span(self.source, keys) if self.source is not None else None

    def resolve_path(self, path: str) -> Path:
        """A path from the run file, relative to the run file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def diagnostic(
        self, code: str, message: str, keys: tuple[str | int, ...], **kw: Any
    ) -> Diagnostic:
        """An error pointing at a setting of this run (or file-less for the default run)."""
        span = self.span(*keys)
        label = str(kw.pop("label", ""))
        return error(code, message, self.source if span else None, span, label, **kw)

    def with_updates(self, **sections: dict[str, Any]) -> Run:
        """A copy with some settings replaced, e.g. ``with_updates(train={"epochs": 2})``."""
        data = self.config.model_dump(exclude_unset=True)  # keep which keys the user wrote
        for name, values in sections.items():
            if isinstance(data.get(name), dict):
                data[name] = {**data[name], **values}
            else:
                data[name] = values
        return Run(RunConfig.model_validate(data), self.source, self.base_dir)


def default_run() -> Run:
    """The embedded digits job: every setting at its default."""
    return Run(RunConfig())


def load_run(path: str | Path) -> Run:
    """Read and validate a run file.

    Raises:
        KdError: KD501 diagnostics (unreadable file, TOML syntax, unknown or bad settings).
    """
    p = Path(path)
    try:
        text = decode_source(read_regular_file(p, MAX_SOURCE_BYTES))
    except OSError as exc:
        raise KdError(
            [error("KD501", f"cannot read run file `{path}`: {exc.strerror or exc}")]
        ) from None
    return parse_run(text, str(path), base_dir=p.parent)


def parse_run(text: str, name: str = "<run>", base_dir: Path | None = None) -> Run:
    """Validate run-file text (see :func:`load_run`)."""
    source = SourceFile(name, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KdError([_toml_error(source, exc)]) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise KdError(
            [
                error(
                    "KD501",
                    "run file nests arrays or tables too deeply",
                    source,
                    Span(0, 0),
                    help="a run file needs at most a few levels of nesting",
                )
            ]
        ) from None
    if "allow_import" in raw:
        raise KdError([_self_permission(source)])
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        diags: dict[object, Diagnostic] = {}
        for item in exc.errors():
            diag = _validation_error(source, item)
            # A union type (``[params]``) reports one error per member: keep the first.
            diags.setdefault(diag.span or diag.message, diag)
        raise KdError(sorted(diags.values(), key=lambda d: d.sort_key())) from None
    return Run(config, source, base_dir if base_dir is not None else Path("."))


def _self_permission(source: SourceFile) -> Diagnostic:
    from kdspec.runtime.imports import CONFIG_SHOWN, ENV_VAR

    return error(
        "KD501",
        "a run file cannot allow imports: permission to run code comes from you, "
        "not from the file being loaded",
        source,
        key_span(source, ("allow_import",)),
        "not allowed in a run file",
        help=f"remove `allow_import` and pass `--allow-import MOD[,MOD]`, set `{ENV_VAR}`, or "
        f"list the modules in `allow_import` of your config file {CONFIG_SHOWN}",
    )


def _toml_error(source: SourceFile, exc: tomllib.TOMLDecodeError) -> Diagnostic:
    message = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", message)
    text = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
    text = text[:1].lower() + text[1:]
    if m:
        offset = source.offset(int(m.group(1)), int(m.group(2)))
        span = Span(offset, offset + 1)
    else:
        span = Span(len(source.text), len(source.text))
    return error(
        "KD501",
        f"run file is not valid TOML: {text}",
        source,
        span,
        "here",
        help="see https://toml.io for the syntax",
    )


def _section_model(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the setting at ``loc`` (for did-you-mean)."""
    model: type[BaseModel] | None = RunConfig
    for key in loc[:-1]:
        if model is None or not isinstance(key, str):
            return None
        field = model.model_fields.get(key)
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _where(loc: tuple[str | int, ...]) -> str:
    table = ".".join(str(k) for k in loc[:-1] if isinstance(k, str))
    return f"`[{table}]`" if table else "the run file"


def _validation_error(source: SourceFile, item: Any) -> Diagnostic:
    loc = tuple(item["loc"])
    span = key_span(source, loc)
    key = loc[-1] if loc else ""
    if item["type"] == "extra_forbidden":
        model = _section_model(loc)
        known = sorted(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        help_text = f"did you mean `{close[0]}`?" if close else None
        if not help_text and known:
            help_text = "known settings: " + ", ".join(known)
        what = "section" if len(loc) == 1 and isinstance(item.get("input"), dict) else "setting"
        return error(
            "KD501",
            f"unknown {what} `{key}` in {_where(loc)}",
            source,
            span,
            "not a known setting",
            help=help_text,
        )
    msg = str(item["msg"])
    msg = msg[:1].lower() + msg[1:]
    name = ".".join(str(k) for k in loc)
    got = item.get("input")
    shown = f" (got `{got!r}`)" if not isinstance(got, dict | list) else ""
    return error("KD501", f"bad value for `{name}`: {msg}{shown}", source, span, msg)


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*="""
)


def _split_key(text: str) -> list[str]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+)""", text)
    return [a or b or c for a, b, c in parts]


def key_span(source: SourceFile | None, loc: tuple[str | int, ...]) -> Span | None:
    """The span of the TOML key that sets ``loc`` (e.g. ``("train", "lr")``).

    Falls back to the longest prefix of ``loc`` found (a section header); None if nothing
    matches. Handles ``[table]`` headers, dotted keys and quoted keys, which covers how run
    files are written; values inside inline tables are located at their table's key.
    """
    if source is None:
        return None
    path = [str(k) for k in loc if isinstance(k, str)]
    best: tuple[int, Span] | None = None
    table: list[str] = []
    offset = 0
    for line in source.text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        header = _HEADER.match(stripped)
        if header:
            table = _split_key(header.group(1))
            start = offset + stripped.index("[")
            span = Span(start, offset + len(stripped.split("#")[0].rstrip()))
            n = _common(table, path)
            if n == len(table) and (best is None or n > best[0]):
                best = (n, span)
        else:
            key = _KEY.match(stripped)
            if key:
                full = table + _split_key(key.group(1))
                n = _common(full, path)
                if n == len(full) or (n == len(path) and n > len(table)):
                    start = offset + key.start(1)
                    span = Span(start, offset + key.end(1))
                    if best is None or n > best[0]:
                        best = (n, span)
        offset += len(line)
    return best[1] if best is not None and best[0] > 0 else None


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
