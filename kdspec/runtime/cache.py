"""The teacher cache: a teacher without weights is trained once and reused by later runs.

An entry is keyed by a hash of everything that determines the trained weights: the
architecture source, class count and input channels, the data (source, split seed, fractions,
the classes the teacher does not see, batch size), the teacher recipe (epochs, optimizer,
learning rate, schedule, seed, ...), :data:`kdspec.zoo.ZOO_VERSION` and the kdspec version.

Layout (default ``~/.cache/kdspec/teachers``; ``KDSPEC_CACHE`` or ``--cache-dir`` override)::

    <cache>/<arch>-<key>/teacher.pt      the state dict
    <cache>/<arch>-<key>/teacher.json    key, key fields, sha256 of teacher.pt, metrics
    <cache>/<arch>-<key>/training/       metrics.jsonl, summary.json, curves.png

On load the sidecar's key and fields and the weights' sha256 are checked; an entry that fails
any check is retrained (and the reason logged), never silently reused. An interrupted teacher
training resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdspec.data import exclude_classes
from kdspec.diagnostics import KdError, error
from kdspec.runtime.data import RunData, eval_loader
from kdspec.runtime.files import atomic_write, check_writable, write_failure
from kdspec.runtime.runfile import DataConfig, TeacherConfig
from kdspec.runtime.supervised import Supervised
from kdspec.runtime.trainer import evaluate_model, train, versions

__all__ = ["CachedTeacher", "cache_root", "get_teacher", "teacher_key_fields"]

WEIGHTS = "teacher.pt"
SIDECAR = "teacher.json"


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: ``override``, else ``$KDSPEC_CACHE``, else ``~/.cache/kdspec/teachers``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("KDSPEC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kdspec" / "teachers"


def _data_fields(cfg: DataConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "source": cfg.source,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "batch_size": cfg.batch_size,
    }
    if cfg.source.startswith("torchvision:"):
        fields["augment"] = cfg.augment
    if cfg.source in ("digits", "synthetic") or cfg.source.startswith("import:"):
        fields["test_fraction"] = cfg.test_fraction
    if cfg.source == "synthetic":
        fields.update(n=cfg.n, num_classes=cfg.num_classes, input_shape=list(cfg.input_shape))
    if cfg.source.startswith("import:") or cfg.source == "torchvision:ImageFolder":
        fields.update(root=cfg.root, options=cfg.options, test_fraction=cfg.test_fraction)
    if cfg.source == "torchvision:ImageFolder":
        fields["image_size"] = cfg.image_size
    if cfg.source == "pydoc" or cfg.source.startswith("jsonl:"):  # the text itself: data_code
        fields.update(test_fraction=cfg.test_fraction, seq_len=cfg.seq_len, packing=cfg.packing)
        fields.update(tokenizer=cfg.tokenizer, prompt_tokens=cfg.prompt_tokens)
        if cfg.max_examples is not None:
            fields["max_examples"] = cfg.max_examples
    return fields


def teacher_key_fields(
    source: str,
    options: dict[str, Any],
    num_classes: int,
    in_channels: int,
    data: DataConfig,
    teacher: TeacherConfig,
    seed: int,
    code: dict[str, Any] | None = None,
    data_code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a pre-trained teacher (hashed into the cache key).

    ``code`` is the model source's fingerprint (the user's code behind an ``import:`` model,
    :func:`~kdspec.runtime.models.source_fingerprint`) and ``data_code`` the data's
    (:attr:`~kdspec.runtime.data.RunData.fingerprint`): editing either retrains the teacher.
    """
    from kdspec.zoo import ZOO_VERSION

    recipe = teacher.model_dump()
    recipe.pop("metric", None)  # always top-1 for a teacher: not part of the key
    if recipe.get("code_version") is None:
        recipe.pop("code_version", None)  # keys of runs that do not set it stay as they were
    recipe["seed"] = seed
    recipe["exclude_classes"] = sorted(recipe["exclude_classes"])
    fields: dict[str, Any] = {
        "architecture": source,
        "model_options": options,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "data": _data_fields(data),
        "teacher": recipe,
        "zoo_version": ZOO_VERSION,
        "kdspec_version": versions()["kdspec"],
    }
    if code:
        fields["code"] = code
    if data_code:
        fields["data"]["code"] = data_code
    return fields


def _key(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class CachedTeacher:
    """A teacher from the cache.

    Attributes:
        model: The model, with the cached weights loaded.
        path: The entry's folder.
        key: The cache key.
        reused: True if the entry was loaded, False if it was (re)trained now.
        metrics: Val/test top-1 of the teacher when it was trained.
    """

    model: nn.Module
    path: Path
    key: str
    reused: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    replaced: str | None = None  # why an existing entry was not reused (corrupt, stale ...)


def _check_entry(entry: Path, key: str, fields: dict[str, Any], model: nn.Module) -> str | None:
    """None if the entry is usable (weights loaded into ``model``), else why not."""
    sidecar, weights = entry / SIDECAR, entry / WEIGHTS
    if not sidecar.exists() and not weights.exists():
        return "missing"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return "its sidecar teacher.json is unreadable"
    if meta.get("key") != key or meta.get("fields") != json.loads(json.dumps(fields)):
        return "its key fields differ from this run's (stale entry)"
    if not weights.exists():
        return "teacher.pt is missing"
    if _sha256(weights) != meta.get("sha256"):
        return "the sha256 of teacher.pt does not match its sidecar (corrupt entry)"
    try:
        state = torch.load(weights, weights_only=True, map_location="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        return f"teacher.pt does not load ({type(exc).__name__})"
    return None


def get_teacher(
    role: str,
    source: str,
    build: Callable[[], nn.Module],
    data: RunData,
    data_cfg: DataConfig,
    teacher_cfg: TeacherConfig,
    seed: int,
    root: Path,
    *,
    options: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
    device: str | torch.device | None = None,
) -> CachedTeacher:
    """Load a pre-trained teacher from the cache, or train it (cross-entropy) and cache it.

    Args:
        role: The teacher's role name (for messages and the trainer's progress).
        source: The architecture source, e.g. ``zoo:cnn_small``.
        build: Makes a freshly initialised model of that architecture.
        data: The run's data; the teacher learns from ``data.splits.train`` less
            ``teacher_cfg.exclude_classes``.
        data_cfg: The ``[data]`` settings (part of the key).
        teacher_cfg: The ``[teacher]`` recipe (part of the key).
        seed: The teacher's seed (initialisation and data order; part of the key).
        root: The cache folder.
        options: The architecture keywords (``[model_options]``; part of the key).
        code: The source's fingerprint (the user's code of an ``import:`` model; part of
            the key), and ``data.fingerprint`` is part of it too.
        log: Where to report what happened (reuse, training, corrupt entries).
        callbacks: Progress observers for the training loop.
        device: Where to train.

    Returns:
        The teacher and where it is cached.
    """
    in_channels = data.in_channels
    fields = teacher_key_fields(
        source,
        dict(options or {}),
        data.num_classes,
        in_channels,
        data_cfg,
        teacher_cfg,
        seed,
        code,
        data.fingerprint,
    )
    key = _key(fields)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.split("/")[-1])[:40]
    entry = root / f"{slug}-{key}"
    folders = (entry, entry / "training")  # a planted link here would redirect the writes
    for path in (*folders, entry / SIDECAR, entry / WEIGHTS):
        odd = path.is_symlink() or (path.exists() and path.is_dir() != (path in folders))
        if odd:
            kind = "a symlink" if path.is_symlink() else "a folder" if path.is_dir() else "a file"
            raise KdError(
                [
                    error(
                        "KD505",
                        f"teacher cache entry `{path}` is {kind}: kdspec neither uses nor "
                        "removes it",
                        help="remove it, or choose another cache with `--cache-dir`",
                    )
                ]
            )
    torch.manual_seed(seed)
    model = build()
    why = _check_entry(entry, key, fields, model)
    if why is None:
        meta = json.loads((entry / SIDECAR).read_text())
        metrics = dict(meta.get("metrics", {}))
        why = _recheck(model, data, data_cfg, metrics)
        if why is None:
            log(
                f"teacher `{role}` ({source}): reusing the cached weights in {entry} "
                f"(re-evaluated: {_recorded(metrics)} as recorded)"
            )
            return CachedTeacher(model, entry, key, True, metrics)
    if why != "missing":
        log(f"teacher `{role}`: cache entry {entry} is not reused: {why}; retraining")
        for name in (WEIGHTS, SIDECAR):
            (entry / name).unlink(missing_ok=True)
    log(
        f"teacher `{role}` ({source}): no cached weights, training it for "
        f"{teacher_cfg.epochs} epochs (once) -> {entry}"
    )
    check_writable(root)
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, "the teacher cache", root) from None
    train_set = data.splits.train
    if teacher_cfg.exclude_classes:
        train_set = exclude_classes(train_set, teacher_cfg.exclude_classes)
        if len(train_set) == 0:  # type: ignore[arg-type]
            raise KdError(
                [
                    error(
                        "KD501",
                        f"`[teacher] exclude_classes` removes every class: teacher `{role}` "
                        "would see no data",
                    )
                ]
            )
    cfg = teacher_cfg.model_copy(update={"seed": seed})
    # A fresh model from the same seed: the one above may hold a partially loaded state.
    torch.manual_seed(seed)
    model = build()
    result = train(
        Supervised(model, role),
        train_set,
        cfg,
        entry / "training",
        batch_size=data_cfg.batch_size,
        val_set=data.splits.val,
        test_set=data.splits.test,
        eval_batch_size=data_cfg.eval_batch_size,
        resume=True,
        callbacks=callbacks,
        meta={"key": key, "teacher": {"role": role, "source": source, "key": key}},
        device=device,
        label=f"teacher {role}",
        num_workers=data_cfg.num_workers,
    )
    model = result.model.roles[role].cpu()
    metrics = {
        "val_top1": _evaluate(model, data.splits.val, data_cfg),
        "test_top1": _evaluate(model, data.splits.test, data_cfg),
        "epochs": teacher_cfg.epochs,
    }
    atomic_write(entry / WEIGHTS, lambda p: torch.save(model.state_dict(), p))
    sidecar = {
        "key": key,
        "fields": fields,
        "sha256": _sha256(entry / WEIGHTS),
        "metrics": metrics,
        "role": role,
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    atomic_write(entry / SIDECAR, lambda p: p.write_text(text))
    # The resume checkpoint is no longer needed once the weights are cached.
    (entry / "training" / "checkpoint.pt").unlink(missing_ok=True)
    shutil.rmtree(entry / "training" / "models", ignore_errors=True)
    log(f"teacher `{role}`: cached in {entry}")
    return CachedTeacher(model, entry, key, False, metrics, None if why == "missing" else why)


# A cached teacher whose top-1 moved by more than this (percentage points) since it was cached
# is not the model that was trained: float differences between processors move a few samples,
# code that changed behind the cache key moves many.
RECHECK_TOLERANCE = 1.0


def _evaluate(model: nn.Module, split: Any, data_cfg: DataConfig) -> float | None:
    if split is None or len(split) == 0:
        return None
    device = next(model.parameters()).device
    loader = eval_loader(split, data_cfg.eval_batch_size, data_cfg.num_workers)
    return float(evaluate_model(model, loader, device)["top1"])


def _recorded(metrics: dict[str, Any]) -> str:
    checked = [k.removeprefix("checked_") for k in metrics if k.startswith("checked_")]
    parts = [
        f"{k.split('_')[0]} top-1 {v:.2f}%"
        for k, v in metrics.items()
        if k in checked and v is not None
    ]
    return ", ".join(parts) or "no recorded accuracy"


def _recheck(
    model: nn.Module, data: RunData, data_cfg: DataConfig, metrics: dict[str, Any]
) -> str | None:
    """None if the loaded teacher scores what it scored when cached (``metrics`` updated).

    Checked on the test split (validation when there is no test data or no record of it).
    """
    for split_name, key in (("test", "test_top1"), ("val", "val_top1")):
        recorded = metrics.get(key)
        now = _evaluate(model, getattr(data.splits, split_name), data_cfg)
        if recorded is None or now is None:
            continue
        if abs(now - float(recorded)) > RECHECK_TOLERANCE:
            return (
                f"re-evaluated, its {split_name} top-1 is {now:.2f}%, but {float(recorded):.2f}% "
                "was recorded when it was cached (the model's code or the data changed)"
            )
        metrics[f"checked_{key}"] = now
        return None
    return None


def teacher_test_top1(
    model: nn.Module, data: RunData, batch_size: int = 512, metric: str = "top1"
) -> float | None:
    """Test top-1 (%), or another ``metric``, of a teacher on the run's test split (None
    without test data)."""
    test = data.splits.test
    if len(test) == 0:  # type: ignore[arg-type]
        return None
    return evaluate_model(model, eval_loader(test, batch_size), next(model.parameters()).device)[
        metric
    ]
