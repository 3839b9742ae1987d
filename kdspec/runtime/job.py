"""A whole job: a checked method + a run -> data, role models, teachers, then training.

This is what ``kdspec train``, ``compare`` and ``reproduce`` share:

1. :func:`prepare` builds the data and a model for every role that needs one (``[models]``,
   or the digits defaults by role kind), loads ``[weights]``, and pre-trains frozen teachers
   that have no weights through the teacher cache;
2. :func:`distill` compiles the method onto those models and trains it;
3. :func:`train_baseline` trains the student alone: same architecture, same initial weights
   (each role is initialised from a seed derived from the run seed and its name), same data
   order, same budget and schedule, cross-entropy only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from kdspec.compiler.taps import BATCH_NORMS
from kdspec.compiler.teacher_cache import CacheError, CacheSpec, TeacherCache
from kdspec.compiler.views import TeacherGenerations
from kdspec.data.augment import ReplayedAugmentation
from kdspec.diagnostics import KdError, error
from kdspec.graph import build_graph
from kdspec.ir import Lowered
from kdspec.ir import models as ir
from kdspec.runtime import distributed
from kdspec.runtime.cache import _data_fields, cache_root, get_teacher, teacher_test_top1
from kdspec.runtime.data import RunData, build_data
from kdspec.runtime.generations import GenerationFile
from kdspec.runtime.metrics import METRICS
from kdspec.runtime.models import (
    brings_weights,
    build_model_from_source,
    check_tokenizers,
    load_weights,
    source_fingerprint,
)
from kdspec.runtime.runfile import DEFAULT_MODELS, Run
from kdspec.runtime.supervised import Supervised
from kdspec.runtime.trainer import TrainResult, derived_seed, train

__all__ = [
    "JobOptions",
    "Prepared",
    "baseline_role",
    "check_role_keys",
    "distill",
    "load_models",
    "model_roles",
    "prepare",
    "reference_teacher",
    "train_baseline",
]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class JobOptions:
    """How to run a job (not what: that is the spec and the run).

    Attributes:
        cache_dir: The teacher cache (default: :func:`~kdspec.runtime.cache.cache_root`).
        allow_import: Packages that ``import:`` model sources may load.
        device: Where to train (default: CUDA if available, else CPU).
        log: Where progress messages go (default: stderr).
        callbacks: Observers of every training loop (progress bars).
        on_nonfinite: ``"stop"`` (KD503) or ``"skip"`` a batch whose loss is not finite.
        untrained: Build the models without pre-training teachers (a plan needs shapes only).
        fold_batch_norm: Run frozen teachers with batch norm folded into the convolution
            before it (:mod:`kdspec.compiler.inference`; equal to ~1e-6, not bit for bit).
    """

    cache_dir: Path | None = None
    allow_import: Sequence[str] = ()
    device: str | None = None
    log: Callable[[str], None] = _stderr
    callbacks: Sequence[Any] = ()
    on_nonfinite: str = "stop"
    untrained: bool = False  # build every model but train no teacher (`kdspec plan`: shapes only)
    fold_batch_norm: bool = False


@dataclass
class Prepared:
    """Everything a job trains with.

    Attributes:
        lowered: The checked method.
        run: The run settings.
        data: The splits and the transfer set.
        models: Role name -> model (weights loaded, teachers pre-trained).
        sources: Role name -> architecture source.
        teachers: Role name -> where its weights came from and its test top-1.
    """

    lowered: Lowered
    run: Run
    data: RunData
    models: dict[str, nn.Module]
    sources: dict[str, str]
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)


def model_roles(method: ir.Method) -> list[ir.Role]:
    """Roles that need a model from the run (not virtual, not a copy of another role)."""
    return [r for r in method.roles if r.mode not in ("virtual", "ema", "snapshot")]


def _trained_somewhere(method: ir.Method) -> set[str]:
    graph = build_graph(method)
    out: set[str] = set()
    for stage in method.effective_stages():
        out |= graph.trained_roles(stage)
    return out


ROLE_TABLES = ("models", "model_options", "weights", "pretrained")


def check_role_keys(run: Run, methods: Sequence[ir.Method]) -> None:
    """Every key of the run's role tables names a role that takes a model in some method.

    A misspelt role (``[weights] teacher`` for a role ``t``) would otherwise be ignored and the
    teacher pre-trained instead of loaded. ``compare`` passes every compared method: a key
    is fine when any of them has the role.

    Raises:
        KdError: KD501 for each key that names no such role, with a did-you-mean.
    """
    import difflib

    roles = sorted({r.name for m in methods for r in model_roles(m)})
    others = {r.name: r.mode for m in methods for r in m.roles if r.name not in roles}
    diags = []
    for table in ROLE_TABLES:
        for key in getattr(run.config, table):
            if key in roles:
                continue
            if key in others:
                why = f"`{key}` is a{'n' if others[key] == 'ema' else ''} {others[key]} role"
                why += " and takes no model of its own"
            else:
                names = ", ".join(m.name for m in methods)
                why = f"{names} ha{'s' if len(methods) == 1 else 've'} no role `{key}`"
            close = difflib.get_close_matches(key, roles, n=1)
            diags.append(
                run.diagnostic(
                    "KD501",
                    f"`[{table}] {key}`: {why}",
                    (table, key),
                    label="not a role",
                    help=(f"did you mean `{close[0]}`? " if close else "")
                    + "roles that take a model: "
                    + ", ".join(f"`{r}`" for r in roles),
                )
            )
    if diags:
        raise KdError(diags)


def _teacher_roles(method: ir.Method) -> list[str]:
    return [r.name for r in model_roles(method) if r.kind == "teacher"]


def reference_teacher(prep: Prepared) -> nn.Module | None:
    """The teacher that ``[train] metric = "teacher_cosine"`` compares with (the first one)."""
    if not METRICS[prep.run.config.train.metric].needs_teacher:
        return None
    names = _teacher_roles(prep.lowered.method)
    return prep.models[names[0]] if names else None


def baseline_role(method: ir.Method) -> ir.Role | None:
    """The role a student-alone baseline trains: the first student, else peer, else assistant."""
    for kind in ("student", "peer", "assistant"):
        for role in method.roles:
            if role.kind == kind and role.mode == "trained":
                return role
    return None


def _source_of(role: ir.Role, run: Run, method: ir.Method | None = None) -> str:
    models = run.config.models
    if role.name in models:
        return models[role.name]
    if not models:
        # The digits default: a role that receives another's weights by `handoff` (Born-Again
        # generations) gets that role's architecture, so the weights fit.
        for stage in method.stages if method is not None else ():
            for src, dst in stage.handoffs:
                source_role = method.role(src) if method is not None else None
                if dst == role.name and source_role is not None:
                    return DEFAULT_MODELS[source_role.kind]
        return DEFAULT_MODELS[role.kind]
    raise KdError(
        [
            run.diagnostic(
                "KD408",
                f"{role.kind} `{role.name}` has no model in the run",
                ("models",),
                label="no entry for this role",
                help=f'add `{role.name} = "zoo:..."` to `[models]`',
            )
        ]
    )


def _build(role: str, source: str, run: Run, data: RunData, opts: JobOptions) -> nn.Module:
    return build_model_from_source(
        role, source, data.num_classes, data.in_channels, run, opts.allow_import
    )


def _probe(role: str, source: str, model: nn.Module, data: RunData) -> None:
    """KD403 now, not an internal error mid-training, when a model cannot take the run's
    inputs (a text model on images) or returns no logits. Runs one batch of two examples in
    eval mode without gradients (this also sizes lazy modules such as ``LazyLinear``)."""
    from torch.utils.data import default_collate

    from kdspec.compiler.taps import call_model, logits_of

    train = data.splits.train
    if len(train) == 0:  # type: ignore[arg-type]
        return
    items = [train[0], train[min(1, len(train) - 1)]]  # type: ignore[arg-type]
    x = default_collate(items)[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = call_model(model, x)
        missing = logits_of(out) is None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise KdError(
            [
                error(
                    "KD403",
                    f"model `{source}` of role `{role}` cannot take this run's inputs (a batch "
                    f"of shape {list(x.shape) if hasattr(x, 'shape') else type(x).__name__}): "
                    f"{type(exc).__name__}: {first}",
                    help="pair the model with data of its kind (a text model needs token ids)",
                )
            ]
        ) from None
    finally:
        model.train(was_training)
    if missing:
        raise KdError(
            [error("KD403", f"model `{source}` of role `{role}` returns no logits", None)]
        )


def _check_batch_norm(models: dict[str, nn.Module], run: Run) -> None:
    """KD501 for `batch_size = 1` with batch norm: statistics of one example are meaningless
    (a run would "finish" at chance accuracy)."""
    if run.config.data.batch_size >= 2:
        return
    with_bn = [
        name
        for name, model in models.items()
        if any(isinstance(m, BATCH_NORMS) for m in model.modules())
    ]
    if with_bn:
        raise KdError(
            [
                run.diagnostic(
                    "KD501",
                    f"`batch_size = 1` with batch norm in {', '.join(f'`{r}`' for r in with_bn)}:"
                    " the batch statistics of one example are meaningless",
                    ("data", "batch_size"),
                    label="one example per batch",
                    help="use batches of at least 2 (batch norm needs several examples)",
                )
            ]
        )


def prepare(lowered: Lowered, run: Run, opts: JobOptions | None = None) -> Prepared:
    """Build data and role models; load weights; pre-train (or reuse) teachers.

    Under ``torchrun`` rank 0 prepares (pre-training teachers alone) while the other ranks
    build the models untrained and wait; then every model's weights come from rank 0.

    Raises:
        KdError: KD404/KD405/KD406/KD408 for models and weights, KD502 for data.
    """
    opts = opts or JobOptions()
    opts = replace(opts, device=distributed.setup(opts.device))  # under torchrun: join, once
    if distributed.world_size() <= 1:
        return _prepare(lowered, run, opts)
    if distributed.is_main():
        with distributed.local():
            prep = _prepare(lowered, run, opts)
    else:
        prep = _prepare(lowered, run, replace(opts, untrained=True))
    distributed.barrier(long=True)  # rank 0 may have pre-trained a teacher meanwhile
    for name in sorted(prep.models):
        model = prep.models[name]
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        model.load_state_dict(distributed.broadcast_object(state))
    prep.teachers = distributed.broadcast_object(prep.teachers)
    return prep


def _prepare(lowered: Lowered, run: Run, opts: JobOptions) -> Prepared:
    """The steps of :func:`prepare` in order: run file -> data -> models -> compiled plan."""
    _check_metric_has_teacher(lowered.method, run)
    data = build_data(run, opts.allow_import)
    roles = _role_models(lowered.method, run, data, opts)
    _check_role_models(roles, run)
    if roles.pending:  # a wrong tap or shape is found in seconds, not after a teacher's training
        models = {n: copy.deepcopy(m) for n, m in roles.models.items()}
        _compile(lowered, models, data, run, opts)
    _pretrain_teachers(roles, run, data, opts)
    _score_teachers(roles, run, data)
    return Prepared(lowered, run, data, roles.models, roles.sources, roles.teachers)


@dataclass
class _RoleModels:
    """The models :func:`prepare` builds, and the frozen teachers still to pre-train."""

    models: dict[str, nn.Module] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[ir.Role] = field(default_factory=list)


def _check_metric_has_teacher(method: ir.Method, run: Run) -> None:
    """KD501: a metric that compares with a teacher, on a method without one."""
    if METRICS[run.config.train.metric].needs_teacher and not _teacher_roles(method):
        raise KdError(
            [
                run.diagnostic(
                    "KD501",
                    f'`[train] metric = "{run.config.train.metric}"` compares with a teacher, '
                    f"and `{method.name}` has none",
                    ("train", "metric"),
                    label="no teacher to compare with",
                    help="use `top1`, `top5` or `perplexity`",
                )
            ]
        )


def _role_models(method: ir.Method, run: Run, data: RunData, opts: JobOptions) -> _RoleModels:
    """A model per role (each from its own seed), with ``[weights]`` or its source's weights."""
    out = _RoleModels()
    trained = _trained_somewhere(method)
    for role in model_roles(method):
        source = _source_of(role, run, method)
        out.sources[role.name] = source
        torch.manual_seed(derived_seed(run.config.train.seed, "init", role.name))
        model = _build(role.name, source, run, data, opts)
        _probe(role.name, source, model, data)
        weights = run.config.weights.get(role.name)
        if weights is not None:
            load_weights(model, role.name, weights, run)
            if role.kind == "teacher":
                path = str(run.resolve_path(weights))
                out.teachers[role.name] = {"source": source, "weights": path}
        elif brings_weights(role.name, source, run):
            if role.mode == "frozen":
                opts.log(
                    f"{role.kind} `{role.name}` ({source}): the source brings trained weights; "
                    "used as is, not pre-trained"
                )
                out.teachers[role.name] = {"source": source, "pretrained": "from the source"}
        elif role.mode == "frozen" and role.name not in trained and not opts.untrained:
            out.pending.append(role)
        out.models[role.name] = model
    return out


def _check_role_models(roles: _RoleModels, run: Run) -> None:
    """Batch norm and tokenizers fit the run; KD407 for a teacher the run forbids pre-training."""
    _check_batch_norm(roles.models, run)
    check_tokenizers(roles.sources, run)
    if roles.pending and not run.config.teacher.pretrain:
        raise KdError(
            [
                run.diagnostic(
                    "KD407",
                    f"{role.kind} `{role.name}` is frozen but has no weights, and `[teacher] "
                    "pretrain = false` forbids training it first",
                    ("teacher", "pretrain"),
                    help=f'give it a checkpoint: `[weights] {role.name} = "path.pt"`, or let a '
                    "stage train it",
                )
                for role in roles.pending
            ]
        )


def _pretrain_teachers(roles: _RoleModels, run: Run, data: RunData, opts: JobOptions) -> None:
    """Each pending frozen teacher from the teacher cache (trained and cached on a miss)."""
    root = cache_root(opts.cache_dir)
    for k, role in enumerate(roles.pending):
        source = roles.sources[role.name]

        def build(r: str = role.name, s: str = source) -> nn.Module:
            return _build(r, s, run, data, opts)

        cached = get_teacher(
            role.name,
            source,
            build,
            data,
            run.config.data,
            run.config.teacher,
            run.config.teacher.seed + k,
            root,
            options=run.config.model_options.get(role.name),
            code=source_fingerprint(source, roles.models[role.name], run),
            log=opts.log,
            callbacks=opts.callbacks,
            device=opts.device,
        )
        roles.models[role.name] = cached.model
        info: dict[str, Any] = {"source": source, "cache": str(cached.path)}
        info["reused"] = cached.reused
        if cached.replaced is not None:
            info["replaced"] = cached.replaced
        checked = cached.metrics.get("checked_test_top1", cached.metrics.get("test_top1"))
        if checked is not None:
            info["test_top1"] = checked
        roles.teachers[role.name] = info


def _score_teachers(roles: _RoleModels, run: Run, data: RunData) -> None:
    """Each teacher's test top-1 (and the run's metric), for the summary."""
    metric = run.config.train.metric
    batch = run.config.data.eval_batch_size
    for name, info in roles.teachers.items():
        if "test_top1" not in info:
            info["test_top1"] = teacher_test_top1(roles.models[name], data, batch)
        if metric not in ("top1", "teacher_cosine"):
            info[f"test_{metric}"] = teacher_test_top1(roles.models[name], data, batch, metric)


def load_models(
    spec: str | Path | Lowered = "hinton",
    run: str | Path | Run | None = None,
    *,
    allow_import: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Prepared:
    """The roles' models of a spec and a run, exactly as ``kdspec train`` prepares them.

    For a training loop of your own: ``[weights]`` are loaded, a frozen teacher without weights
    comes pre-trained from the teacher cache (trained once and cached if it is not there yet,
    with the run's ``[teacher]`` recipe), and sources that bring their weights are used as is.

    Args:
        spec: A ``.kd`` file, a library method name, or a method from
            :func:`kdspec.api.load_method`; it says which roles exist and which are teachers.
        run: A run file (path or :class:`Run`); None for the embedded digits job.
        allow_import: Modules ``import:`` sources may load (as ``--allow-import``).
        cache_dir: The teacher cache (default ``$KDSPEC_CACHE`` or ``~/.cache/kdspec``).
        device: Where a teacher is pre-trained if it must be.
        log: Where progress messages go (default: stderr).

    Returns:
        :class:`Prepared`: ``.models`` (role -> ``nn.Module``), ``.data`` (the splits),
        ``.teachers`` (where each teacher's weights came from, its test top-1).

    Example:
        >>> from kdspec.runtime import load_models
        >>> prep = load_models("hinton", log=lambda m: None)  # doctest: +SKIP
        >>> teacher = prep.models["t"]  # the cached pre-trained zoo:cnn_small  # doctest: +SKIP
    """
    from kdspec.api import load_method
    from kdspec.runtime.runfile import default_run, load_run

    if not isinstance(run, Run):
        run = load_run(run) if run is not None else default_run()
    lowered = (
        spec if isinstance(spec, Lowered) else load_method(spec, overrides=dict(run.config.params))
    )
    opts = JobOptions(
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        allow_import=tuple(allow_import),
        device=device,
        log=log or _stderr,
    )
    return prepare(lowered, run, opts)


def _example_batch(data: RunData, run: Run) -> Any:
    transfer = data.transfer
    n = min(len(transfer), run.config.data.batch_size)  # type: ignore[arg-type]
    return default_collate([transfer[i] for i in range(n)])


def _meta(prep: Prepared, kind: str) -> dict[str, Any]:
    spec = prep.lowered.method.model_dump(mode="json")
    run = prep.run.config.model_dump(mode="json")
    if prep.run.config.output_cache.store == "off":
        run.pop("output_cache")  # keys (and summaries) of runs without it stay as they were
    key = hashlib.sha256(
        json.dumps([kind, spec, run, prep.sources], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    data = prep.data
    return {
        "key": key,
        "kind": kind,
        "method": prep.lowered.method.name,
        "run_file": prep.run.source.name if prep.run.source else None,
        "models": prep.sources,
        "teachers": prep.teachers,
        "data": {
            "source": prep.run.config.data.source,
            "num_classes": data.num_classes,
            "train": len(data.splits.train),  # type: ignore[arg-type]
            "transfer": len(data.transfer),  # type: ignore[arg-type]
            "val": len(data.splits.val),  # type: ignore[arg-type]
            "test": len(data.splits.test),  # type: ignore[arg-type]
            "exclude_classes": list(prep.run.config.data.exclude_classes),
        },
        "spec": spec,
        "run": run,
    }


def compile_prepared(prep: Prepared, opts: JobOptions | None = None) -> Any:
    """Compile the method onto the prepared models (adapters initialised from a fixed seed)."""
    return _compile(prep.lowered, dict(prep.models), prep.data, prep.run, opts or JobOptions())


def _compile(
    lowered: Lowered, models: dict[str, nn.Module], data: RunData, run: Run, opts: JobOptions
) -> Any:
    """compile_spec on a run's models and data: taps resolved (KD401/KD402), adapters sized."""
    from kdspec.compiler import compile_spec

    torch.manual_seed(derived_seed(run.config.train.seed, "compile"))
    return compile_spec(
        lowered,
        models,
        _example_batch(data, run),
        num_classes=data.num_classes,
        num_samples=len(data.transfer),  # type: ignore[arg-type]
        train_data=data.transfer,
        device=opts.device,
    )


def _train(
    model: Any,
    prep: Prepared,
    out_dir: Path,
    resume: bool,
    opts: JobOptions,
    meta: dict[str, Any],
    label: str,
) -> TrainResult:
    cfg = prep.run.config
    return train(
        model,
        prep.data.transfer,
        cfg.train,
        out_dir,
        batch_size=cfg.data.batch_size,
        val_set=prep.data.splits.val,
        test_set=prep.data.splits.test,
        eval_batch_size=cfg.data.eval_batch_size,
        resume=resume,
        callbacks=opts.callbacks,
        meta=meta,
        device=distributed.setup(opts.device),  # cuda:LOCAL_RANK under torchrun
        label=label,
        num_workers=cfg.data.num_workers,
        reference=reference_teacher(prep),
        on_nonfinite=opts.on_nonfinite,
    )


def distill(
    prep: Prepared,
    out_dir: str | Path,
    *,
    resume: bool = False,
    opts: JobOptions | None = None,
    label: str | None = None,
) -> TrainResult:
    """Compile the method and train it; files go to ``out_dir`` (see :func:`~.trainer.train`).

    ``label`` names the run in progress output (default: the method's name).
    """
    opts = opts or JobOptions()
    distiller = compile_prepared(prep, opts)
    distiller.fold_batch_norm = opts.fold_batch_norm
    name = label or prep.lowered.method.name
    cache = enable_output_cache(distiller, prep, opts)
    generations = keep_generations(distiller, prep, opts)
    try:
        return _train(distiller, prep, Path(out_dir), resume, opts, _meta(prep, "distill"), name)
    except CacheError as exc:
        raise KdError(
            [prep.run.diagnostic("KD501", str(exc), ("output_cache",), label="this cache")]
        ) from None
    finally:
        for role, pairs in distiller.folded_batch_norms().items():
            opts.log(f"teacher `{role}`: {len(pairs)} batch norms folded into their convolutions")
        if cache is not None:
            cache.flush()
            for line in cache.summary():
                opts.log(line)
        if generations is not None:
            generations[0].flush(distiller.roles[generations[1]])


def keep_generations(
    distiller: Any, prep: Prepared, opts: JobOptions
) -> tuple[TeacherGenerations, str] | None:
    """Sequence-level KD's teacher generations: seeded by the run, kept on disk beside the
    teacher cache (``<cache dir>/generations``) and reused by every later run with the same
    teacher, data and settings. Returns the view and its generating role (None without one)."""
    rewrite = distiller.compiled.rewrite
    if rewrite is None or not isinstance(rewrite[0], TeacherGenerations):
        return None
    view, role = rewrite
    samples = len(prep.data.transfer)  # type: ignore[arg-type]
    identity = {
        "data": _data_fields(prep.run.config.data),
        "fingerprint": prep.data.fingerprint,
        "transfer": samples,
    }
    store = GenerationFile(cache_root(opts.cache_dir) / "generations", identity, opts.log)
    view.keep(store, prep.run.config.train.seed, samples)
    return view, role


def enable_output_cache(distiller: Any, prep: Prepared, opts: JobOptions) -> TeacherCache | None:
    """Turn on ``[output_cache]`` for a compiled method (None when it is off).

    Raises:
        KdError: KD501 when the training data is random and not replayed, or the method reads
            a frozen teacher through a random view.
    """
    cfg = prep.run.config.output_cache
    if cfg.store == "off":
        return None
    if not any(r.mode == "frozen" for r in prep.lowered.method.roles):
        opts.log(f"output cache: `{prep.lowered.method.name}` has no frozen role, nothing to cache")
        return None
    transfer = prep.data.transfer
    replays = transfer.replays if isinstance(transfer, ReplayedAugmentation) else 1
    problem = None if replays > 1 else _random_items(transfer)
    folder = cache_root(opts.cache_dir) / "outputs"
    if cfg.folder:
        folder = prep.run.resolve_path(cfg.folder)
    data = _data_fields(prep.run.config.data)
    data.pop("batch_size")  # a frozen teacher's outputs do not depend on it
    identity = {
        "data": data,
        "exclude_classes": sorted(prep.run.config.data.exclude_classes),
        "fingerprint": prep.data.fingerprint,
        "transfer": len(transfer),  # type: ignore[arg-type]
        "augment": transfer.key() if isinstance(transfer, ReplayedAugmentation) else None,
    }
    try:
        if problem is not None:
            raise ValueError(problem)
        spec = CacheSpec(cfg.store, cfg.dtype, cfg.topk, cfg.max_mb, folder, replays)
        return distiller.cache_frozen_outputs(spec=spec, identity=identity, log=opts.log)
    except ValueError as exc:
        raise KdError(
            [
                prep.run.diagnostic(
                    "KD501",
                    str(exc),
                    ("output_cache", "store"),
                    label="cache turned on here",
                    help="turn the output cache off, or make the teacher's inputs the same "
                    "every epoch (see docs/runfile.md, [output_cache])",
                )
            ]
        ) from None


def _random_items(dataset: Any) -> str | None:
    """Why the dataset's items differ between two reads (None: they do not, as far as seen)."""
    n = len(dataset)
    for i in sorted({0, n // 2, n - 1}):
        a, b = dataset[i][0], dataset[i][0]
        same = (
            torch.equal(a, b)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            else all(torch.equal(a[k], b[k]) for k in a)
            if isinstance(a, dict)
            else a == b
        )
        if not same:
            return (
                f"the training data is random (item {i} differed between two reads), so a "
                "teacher's outputs change every epoch and cannot be cached; kdspec replays the "
                "crop + flip of `[data] augment` (torchvision sources), other random "
                "augmentation must be turned off for the cache"
            )
    return None


def train_baseline(
    prep: Prepared,
    out_dir: str | Path,
    *,
    resume: bool = False,
    opts: JobOptions | None = None,
    label: str | None = None,
) -> TrainResult | None:
    """Train the student alone with the distillation's budget, seed and data order.

    Returns:
        The result, or None if the method has no trained student, peer or assistant.
    """
    opts = opts or JobOptions()
    role = baseline_role(prep.lowered.method)
    if role is None:
        return None
    source = prep.sources[role.name]
    torch.manual_seed(derived_seed(prep.run.config.train.seed, "init", role.name))
    model = _build(role.name, source, prep.run, prep.data, opts)
    weights = prep.run.config.weights.get(role.name)
    if weights is not None:
        load_weights(model, role.name, weights, prep.run)
    meta = _meta(prep, "baseline")
    meta["spec"] = {"baseline": "cross-entropy only", "role": role.name, "of": meta["method"]}
    return _train(
        Supervised(model, role.name),
        prep,
        Path(out_dir),
        resume,
        opts,
        meta,
        label or f"{role.name} alone",
    )
