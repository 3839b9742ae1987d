"""The training loop: thin and explicit (torchtune style), the same for every method.

One loop drives a compiled :class:`~kdspec.compiler.Distiller` and the plain
:class:`~kdspec.runtime.supervised.Supervised` (teachers, baselines) alike::

    for each stage plan, for each of its repetitions:
        set_stage(name); fresh optimizer over trainable_parameters()
        for each epoch of the stage:
            for each batch: loss -> backward -> clip -> step -> after_step()
            evaluate every eval role on val and test; write metrics.jsonl; checkpoint
        finish_repeat(last=...)  # hand-offs between generations, not after the last

**Budget.** ``[train].epochs`` is the whole run. A stage lasts its own duration (epochs, steps,
or a fraction of the run); the stages without one share what is left (per repetition: a stage
repeated n times gets 1/n of its share each time). Durations become whole optimizer steps.

**Schedule.** Each stage (and repetition) starts a fresh optimizer and runs the learning-rate
schedule over its own length: step milestones are given in epochs of the whole run and scaled
to the stage (a one-stage method gets them unchanged); cosine decays to zero at the stage's end;
``warmup_epochs`` ramps the rate linearly at the start of every stage.

**Determinism.** The loader's order comes from a generator seeded with ``[train].seed``; the
global RNGs are seeded too; checkpoints hold every RNG state, so a resumed run continues with
the numbers an uninterrupted run would have produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdspec.compiler.stages import StageRun, plan_stages
from kdspec.diagnostics import KdError, error
from kdspec.ir.evaluate import Progress
from kdspec.runtime import distributed
from kdspec.runtime.accel import compile_roles, precision_for
from kdspec.runtime.checkpoint import Checkpoint, Position, rng_state, set_rng_state
from kdspec.runtime.data import drops_a_lone_example, eval_loader, train_loader
from kdspec.runtime.files import atomic_write
from kdspec.runtime.metrics import METRICS as METRIC_KINDS
from kdspec.runtime.metrics import evaluate_logits
from kdspec.runtime.runfile import TrainConfig

__all__ = [
    "Callback",
    "Checkpoint",
    "StageRun",
    "TrainOptions",
    "TrainRecipe",
    "TrainResult",
    "Trainable",
    "evaluate_model",
    "lr_factor",
    "plan_stages",
    "seed_everything",
    "train",
    "versions",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"


class Trainable(Protocol):
    """What the loop drives: a compiled Distiller, or Supervised (plain cross-entropy).

    Calling it with ``(batch, progress=Progress(...))`` returns an object with ``loss`` (a
    scalar tensor) and ``terms`` (term name -> weighted value).
    """

    @property
    def stage_plans(self) -> Sequence[Any]: ...
    @property
    def roles(self) -> nn.ModuleDict: ...

    def set_stage(self, name: str) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def trainable_parameters(self) -> Iterable[nn.Parameter]: ...
    def after_step(self) -> None: ...
    def finish_repeat(self, last: bool = False) -> None: ...
    def eval_roles(self) -> list[str]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...
    def to(self, device: torch.device) -> Any: ...


class Callback(Protocol):
    """Observers of the loop (progress display, tests). Every method is optional."""

    def on_train_start(self, label: str, total_steps: int, done_steps: int) -> None: ...
    def on_step(self, stage: str, terms: dict[str, float]) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...
    def on_train_end(self) -> None: ...


def _notify(callbacks: Iterable[Any], event: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(*args)


def lr_factor(cfg: TrainConfig, step: int, stage_steps: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based) of a stage of ``stage_steps`` steps.

    Example:
        >>> cfg = TrainConfig(epochs=240, schedule="step", milestones=[150, 180, 210])
        >>> [round(lr_factor(cfg, e * 10, 2400, 10), 4) for e in (0, 149, 150, 180, 239)]
        [1.0, 1.0, 0.1, 0.01, 0.001]
    """
    epoch = step / steps_per_epoch
    stage_epochs = stage_steps / steps_per_epoch
    warm = min(cfg.warmup_epochs, stage_epochs)
    if warm > 0 and epoch < warm:
        return (step + 1) / (warm * steps_per_epoch)
    if cfg.schedule == "cosine":
        span = max(stage_epochs - warm, 1e-12)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warm) / span)))
    if cfg.schedule == "step":
        scale = stage_epochs / cfg.epochs
        passed = sum(1 for m in cfg.milestones if epoch >= m * scale - 1e-9)
        return float(cfg.gamma**passed)
    return 1.0


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD, AdamW or Adam over ``params`` with the run's settings."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(seed: int, *parts: object) -> int:
    """A seed for one purpose (e.g. one role's initialisation), stable across runs."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def versions() -> dict[str, str]:
    """Versions recorded in every summary."""
    try:
        kd = metadata.version("kdspec")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout without install
        kd = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "kdspec": kd}


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _deployed(model: Any, role: str) -> nn.Module:
    """The role as evaluated: its model, or its ``predict`` where the spec has one."""
    deployed = getattr(model, "deployed", None)
    return deployed(role) if deployed is not None else model.roles[role]


def evaluate_model(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    reference: nn.Module | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean cross-entropy and perplexity of ``model`` over
    ``loader``, and its cosine to ``reference``'s logits when given (see
    :mod:`kdspec.runtime.metrics`). Train/eval states are restored.
    """
    return evaluate_logits(model, loader, device, _to, reference)


@dataclass
class TrainResult:
    """What a finished run leaves: its folder, per-epoch records and summary, the model."""

    out_dir: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    model: Any = field(repr=False)


HUGE_LOSS = 1e6  # an epoch loss beyond this is divergence, even while it stays finite


def _atomic_write(path: Path, write: Any) -> None:
    atomic_write(path, write)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def _fingerprint(cfg: TrainConfig, stages: list[StageRun], meta: dict[str, Any]) -> str:
    text = json.dumps(
        {"train": cfg.model_dump(), "stages": [s.__dict__ for s in stages], "key": meta.get("key")},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_records(path: Path, max_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by an interrupted write: past the checkpoint
                continue
            if isinstance(rec, dict) and rec.get("step", max_step + 1) <= max_step:
                out.append(rec)
    return out


def _non_finite(out: Any) -> str | None:
    for name, value in out.terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            return name
    if not bool(torch.isfinite(out.loss.detach()).all()):
        return "the total loss"
    return None


def _update_best(
    best: dict[str, Any], record: dict[str, Any], roles: list[str], metric: str = "top1"
) -> None:
    judge = METRIC_KINDS[metric]
    for role in roles:
        val = record["val"].get(role)
        if val is None or metric not in val:
            continue
        old = best.get(role)
        if old is None or judge.better(val[metric], old["val"][metric]):
            best[role] = {"epoch": record["epoch"], "val": val, "test": record["test"].get(role)}


def train(
    model: Trainable,
    train_set: Dataset[Any],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    batch_size: int,
    val_set: Dataset[Any] | None = None,
    test_set: Dataset[Any] | None = None,
    eval_batch_size: int = 512,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    meta: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    label: str = "",
    num_workers: int = 0,
    reference: nn.Module | None = None,
    on_nonfinite: str = "stop",
) -> TrainResult:
    """Train ``model`` through all its stages, writing metrics, checkpoints and a summary.

    Args:
        model: A compiled Distiller or a Supervised wrapper.
        train_set: Training items ``(x, y, index)``.
        cfg: The ``[train]`` settings (epochs, optimizer, schedule, seed, eval protocol).
        out_dir: Receives ``metrics.jsonl``, ``summary.json``, ``curves.png``,
            ``checkpoint.pt`` and ``models/<role>.pt``.
        batch_size: Training batch size.
        val_set: Validation data (model selection for ``eval = "best_val"``), if any.
        test_set: Held-out test data, if any.
        eval_batch_size: Batch size for evaluation.
        resume: Continue from ``out_dir/checkpoint.pt`` if it exists.
        callbacks: Observers (see :class:`Callback`).
        meta: Extra fields for the summary (resolved spec, run, models); ``meta["key"]``
            identifies the job, so a checkpoint of another job is not resumed by mistake.
        device: Where to train (default: CUDA if available, else CPU).
        label: A name for progress output.
        num_workers: Data-loader worker processes (``[data] num_workers``).
        reference: The teacher that ``teacher_cosine`` compares with (``[train] metric``).
        on_nonfinite: ``"stop"`` (KD503 at the first non-finite loss) or ``"skip"`` (the
            batch makes no update; each epoch's record counts the skipped batches).

    Returns:
        The records, the summary and the trained model.

    Raises:
        KdError: KD503 when the loss stops being finite (the files written so far are kept);
            KD501 when ``resume`` finds a checkpoint of a different job; KD405 when the
            checkpoint cannot be read.
    """
    options = TrainOptions(
        batch_size=batch_size,
        val_set=val_set,
        test_set=test_set,
        eval_batch_size=eval_batch_size,
        resume=resume,
        callbacks=tuple(callbacks),
        meta=dict(meta or {}),
        device=torch.device(device) if device is not None else _default_device(),
        label=label,
        num_workers=num_workers,
        reference=reference,
        on_nonfinite=on_nonfinite,
    )
    return TrainRecipe(model, train_set, cfg, Path(out_dir), options).run()


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train` runs (its keyword arguments, documented there)."""

    batch_size: int
    val_set: Dataset[Any] | None = None
    test_set: Dataset[Any] | None = None
    eval_batch_size: int = 512
    resume: bool = False
    callbacks: tuple[Any, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: _default_device())
    label: str = ""
    num_workers: int = 0
    reference: nn.Module | None = None
    on_nonfinite: str = "stop"


@dataclass
class _Repeat:
    """One repetition of a stage while it runs: its optimizer and how far it got."""

    stage: StageRun
    index: int
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer | None
    steps_done: int = 0
    stage_epoch: int = 0
    step_model: Any = None  # the model, or a distributed.StageParallel under torchrun


class TrainRecipe:
    """One training run, in the order it happens (the shape of torchtune's recipes).

    :meth:`run` is the whole recipe: :meth:`setup` (device, loaders, stage plan), :meth:`resume`
    (a :class:`~kdspec.runtime.checkpoint.Checkpoint`, or a fresh folder), then for every stage
    repetition :meth:`start_repeat` and its epochs (:meth:`run_epoch`: :meth:`step` per batch,
    then :meth:`record`, :meth:`evaluate`, :meth:`checkpoint`), and :meth:`finish` (the models,
    the summary, the curves).
    """

    def __init__(
        self,
        model: Trainable,
        train_set: Dataset[Any],
        cfg: TrainConfig,
        out: Path,
        options: TrainOptions,
    ) -> None:
        self.model, self.train_set, self.cfg, self.out, self.o = model, train_set, cfg, out, options
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.position = Position()
        self.global_step, self.global_epoch, self.started = 0, 0.0, 0.0
        self.pending: Checkpoint | None = None  # the checkpoint to restore at its repetition
        self.warned_huge = False

    # -- the recipe -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train through every stage and write the run's files (see :func:`train`)."""
        self.setup()
        ckpt = self.resume()
        self.started = time.perf_counter() - (ckpt.elapsed if ckpt is not None else 0.0)
        o = self.o
        _notify(o.callbacks, "on_train_start", o.label, self.total_steps, self.global_step)
        try:
            if ckpt is not None and ckpt.done:
                self.model.load_state_dict(ckpt.model)
            else:
                for stage in self.stages:
                    for rep in range(stage.repeat):
                        self.run_repeat(stage, rep)
                self.checkpoint(None, done=True)
        finally:
            _notify(o.callbacks, "on_train_end")
        return self.finish()

    def setup(self) -> None:
        """Device, data loaders, the stage plan, the job's fingerprint and the global seed."""
        o, dev = self.o, self.o.device
        self.out.mkdir(parents=True, exist_ok=True)
        self.precision = precision_for(self.cfg.amp, dev)  # KD501 fp16 on CPU; warns on bf16
        self.use_amp = self.precision.scaler  # fp16 on CUDA: a gradient scaler
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        if self.cfg.compile:
            compile_roles(self.model)
        self.model.to(dev)
        if o.reference is not None:
            o.reference.to(dev)
        # under torchrun: each rank takes a shard of every global batch (kdspec.runtime.distributed)
        self.world, self.main = distributed.world_size(), distributed.rank() == 0
        make_loader = distributed.sharded_loader if self.world > 1 else train_loader
        if self.world > 1 and hasattr(self.model, "gather_batch"):  # CRD's bank: every shard
            self.model.gather_batch = distributed.gather_batch
        self.loader = make_loader(self.train_set, o.batch_size, self.cfg.seed, o.num_workers)
        assert self.loader.generator is not None
        self.generator: torch.Generator = self.loader.generator
        if drops_a_lone_example(self.train_set, o.batch_size) and self.main:
            print(
                f"note: {o.label or 'training'}: the last batch of each epoch would hold 1 example "
                f"({len(self.train_set)} examples, batches of {o.batch_size}); it is left out",  # type: ignore[arg-type]
                file=sys.stderr,
            )
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise KdError([error("KD502", "the training set is empty")])
        self.stages = plan_stages(self.model.stage_plans, self.cfg.epochs, self.steps_per_epoch)
        self.fingerprint = _fingerprint(self.cfg, self.stages, o.meta)
        self.evals = {
            name: eval_loader(ds, o.eval_batch_size, o.num_workers)
            for name, ds in (("val", o.val_set), ("test", o.test_set))
            if ds is not None and len(ds) > 0  # type: ignore[arg-type]
        }
        self.roles = self.model.eval_roles()
        self.total_steps = sum(s.steps * s.repeat for s in self.stages)
        seed_everything(self.cfg.seed + distributed.rank())  # rank 0 draws what one process would

    def resume(self) -> Checkpoint | None:
        """The checkpoint to continue from (KD405, KD501), or ``None`` after clearing the folder.

        ``metrics.jsonl`` is rewritten without the lines written after the checkpoint (a crash
        between the two writes), so a resumed run never repeats an epoch in its records.
        """
        path = self.out / CHECKPOINT
        ckpt = None
        if self.o.resume and path.exists():
            ckpt = Checkpoint.load(path)
            if ckpt.fingerprint != self.fingerprint:
                raise KdError([_other_job(path)])
            self.position, self.best = ckpt.position, dict(ckpt.best)
            self.global_step, self.global_epoch = ckpt.global_step, ckpt.global_epoch
            self.pending = ckpt  # restored by start_repeat at the repetition it stopped in
        elif self.main:
            for name in (METRICS, SUMMARY, CHECKPOINT):
                (self.out / name).unlink(missing_ok=True)
        self.records = _read_records(self.out / METRICS, self.global_step)
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        if self.main:
            _atomic_write(self.out / METRICS, lambda p: p.write_text(text))
        return ckpt

    def run_repeat(self, stage: StageRun, rep: int) -> None:
        """One repetition of a stage, epoch by epoch (skipped when the checkpoint is past it)."""
        # The position only moves forward: a repetition before it was finished before resuming.
        if self.position.past(stage.index, rep):
            return
        run = self.start_repeat(stage, rep)
        while run.steps_done < stage.steps:
            self.run_epoch(run)
        self.model.finish_repeat(last=rep == stage.repeat - 1)

    def start_repeat(self, stage: StageRun, rep: int) -> _Repeat:
        """Enter the stage with a fresh optimizer; restore the checkpoint if it stopped here."""
        model = self.model
        model.set_stage(stage.name)
        model.train()
        params = list({id(p): p for p in model.trainable_parameters()}.values())
        run = _Repeat(stage, rep, params, make_optimizer(params, self.cfg) if params else None)
        ckpt = self.pending
        if ckpt is not None and ckpt.position.at(stage.index, rep):
            model.load_state_dict(ckpt.model)
            if run.opt is not None and ckpt.optimizer:
                run.opt.load_state_dict(ckpt.optimizer)
            if self.use_amp and ckpt.scaler:
                self.scaler.load_state_dict(ckpt.scaler)
            set_rng_state(_rank_rng(ckpt.rng, self.world), self.generator)
            run.steps_done, run.stage_epoch = ckpt.position.steps_done, ckpt.position.stage_epoch
            self.pending = None
        run.step_model = distributed.wrap(model, params, self.o.device)  # DDP when world > 1
        self.share_output_cache()
        return run

    def share_output_cache(self) -> None:
        """Under torchrun: hand each rank's new output-cache rows to the others (every rank
        calls this at each stage's start and each epoch's end), so each sample's frozen
        teacher forward runs once over all ranks."""
        sync = getattr(self.model, "synchronize_output_cache", None)
        if self.world > 1 and sync is not None:
            sync(distributed.peers())

    def run_epoch(self, run: _Repeat) -> None:
        """One pass over the loader (or what is left of the stage), then its record."""
        spe = self.steps_per_epoch
        n = min(spe, run.stage.steps - run.steps_done)
        sums: dict[str, float] = {}
        batches = iter(self.loader)
        lr = self.cfg.lr
        for k in range(n):
            batch = _to(next(batches), self.o.device)
            share = distributed.shard_weight(self.loader, k, _batch_len(batch))
            lr = self.cfg.lr * lr_factor(self.cfg, run.steps_done, run.stage.steps, spe)
            if run.opt is not None:
                for group in run.opt.param_groups:
                    group["lr"] = lr
            values = self.step(run, batch, share)
            if values is None:  # no update from this batch; counted in the epoch's record
                sums["skipped_nonfinite"] = sums.get("skipped_nonfinite", 0.0) + 1
                continue
            for key, v in values.items():  # this rank's share of the global batch's mean
                sums[key] = sums.get(key, 0.0) + v * share / self.world
            _notify(self.o.callbacks, "on_step", run.stage.name, values)
        run.stage_epoch += 1
        self.global_epoch += n / spe
        record = self.record(run, n, sums, lr)
        self.share_output_cache()
        self.evaluate(record)
        self.log(record)
        self.checkpoint(run)
        _notify(self.o.callbacks, "on_epoch_end", record)

    def step(self, run: _Repeat, batch: Any, share: float = 1.0) -> dict[str, float] | None:
        """One optimizer step; the batch's loss and terms, or ``None`` for a skipped batch.

        A non-finite term stops the run with KD503 (``on_nonfinite="stop"``) or makes no
        update (``"skip"``). Under torchrun the loss is weighted by ``share``, the rank's part
        of the global batch (so DDP's mean of gradients is the global batch's gradient), and a
        non-finite loss on any rank counts on all.
        """
        progress = Progress.at(run.steps_done, self.steps_per_epoch, run.stage.steps)
        with self.precision.autocast(self.o.device.type):
            result = run.step_model(batch, progress=progress)
        bad = _non_finite(result)
        if self.world > 1 and distributed.any_rank(bad is not None):
            bad = bad or "the loss on another process"
        if bad is not None and self.o.on_nonfinite != "skip":
            self.diverge(bad, run.stage)
        if bad is None and run.opt is not None and result.loss.requires_grad:
            self.optimize(run, result.loss * share if self.world > 1 else result.loss)
        self.model.after_step()
        run.steps_done += 1
        self.global_step += 1
        if bad is not None:
            return None
        values = {"loss": float(result.loss.detach())}
        values.update({k: float(v.detach()) for k, v in result.terms.items()})
        return values

    def optimize(self, run: _Repeat, loss: torch.Tensor) -> None:
        """Backward, clip (``[train] grad_clip``) and step, through the AMP scaler."""
        assert run.opt is not None
        run.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if isinstance(run.step_model, distributed.StageParallel):
            run.step_model.after_backward()  # the stage's first step: gradients averaged here
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(run.opt)
            torch.nn.utils.clip_grad_norm_(run.params, self.cfg.grad_clip)
        self.scaler.step(run.opt)
        self.scaler.update()

    def record(self, run: _Repeat, n: int, sums: dict[str, float], lr: float) -> dict[str, Any]:
        """The epoch's record: position, learning rate, mean loss and terms over counted batches."""
        skipped = int(sums.pop("skipped_nonfinite", 0))
        sums = distributed.sum_over_ranks(sums)  # each rank added its share of the mean
        counted = n - skipped
        record: dict[str, Any] = {
            "stage": run.stage.name,
            "repeat": run.index,
            "stage_epoch": run.stage_epoch,
            "epoch": round(self.global_epoch, 6),
            "step": self.global_step,
            "lr": lr,
            "loss": sums.pop("loss") / counted if counted else float("nan"),
            "terms": {k: v / counted for k, v in sums.items()} if counted else {},
        }
        if skipped:
            record["skipped_nonfinite"] = skipped
        if not self.warned_huge and abs(record["loss"]) > HUGE_LOSS:
            self.warned_huge = True  # said once: finite but useless training
            print(
                f"warning: {self.o.label or 'training'}: epoch loss {record['loss']:.3g} "
                f"at epoch {self.global_epoch:g}: the objective is diverging (a tiny "
                "temperature or a huge weight?); training goes on",
                file=sys.stderr,
            )
        return record

    def evaluate(self, record: dict[str, Any]) -> None:
        """Every eval role's metrics on each evaluation split, into ``record`` (rank 0)."""
        for split, loader in self.evals.items() if self.main else ():
            record[split] = {
                r: evaluate_model(_deployed(self.model, r), loader, self.o.device, self.o.reference)
                for r in self.roles
            }
        record.setdefault("val", {})
        record.setdefault("test", {})

    def log(self, record: dict[str, Any]) -> None:
        """Keep the record, update the best epochs and append it to ``metrics.jsonl``."""
        record["time_s"] = round(time.perf_counter() - self.started, 3)
        record["metric"] = self.cfg.metric
        self.records.append(record)
        _update_best(self.best, record, self.roles, self.cfg.metric)
        if self.main:
            with (self.out / METRICS).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(self, run: _Repeat | None, done: bool = False) -> None:
        """Save where the run stands (``run`` is ``None`` after the last step: ``done``)."""
        if run is not None:
            self.position = Position(run.stage.index, run.index, run.steps_done, run.stage_epoch)
        rng = rng_state(self.generator)
        if self.world > 1:  # every rank's generators, for a resume under torchrun
            rng["ranks"] = distributed.all_gather_objects(rng_state(self.generator))
        if not self.main:
            return
        Checkpoint(
            fingerprint=self.fingerprint,
            position=self.position,
            global_step=self.global_step,
            global_epoch=self.global_epoch,
            elapsed=time.perf_counter() - self.started,
            best=self.best,
            model=self.model.state_dict(),
            optimizer=run.opt.state_dict() if run is not None and run.opt is not None else None,
            scaler=self.scaler.state_dict() if run is not None and self.use_amp else None,
            rng=rng,
            done=done,
        ).save(self.out / CHECKPOINT)

    def diverge(self, term: str, stage: StageRun) -> None:
        """Write the diverged summary and raise KD503 (the files so far are kept)."""
        if self.main:
            _diverged(
                self.out, self.records, self.best, self.cfg, self.roles, self.o.meta, term, stage,
                self.global_epoch,
            )  # fmt: skip
        raise KdError(
            [
                _nonfinite_diagnostic(
                    self.model, term, stage.name, self.global_epoch, self.global_step, self.out
                )
            ]
        )

    def finish(self) -> TrainResult:
        """Save each eval role's weights, write the summary and the curves (rank 0)."""
        if not self.main:
            return TrainResult(self.out, self.records, {}, self.model)
        models_dir = self.out / "models"
        models_dir.mkdir(exist_ok=True)
        for role in self.roles:
            _atomic_write(
                models_dir / f"{role}.pt",
                lambda p, r=role: torch.save(self.model.roles[r].state_dict(), p),
            )
            predictions = getattr(self.model, "predictions", {})
            if role in predictions:  # what `predict` adds to the role (SimKD's projector)
                _atomic_write(
                    models_dir / f"{role}.predict.pt",
                    lambda p, node=predictions[role]: torch.save(node.state_dict(), p),
                )
        wall = time.perf_counter() - self.started
        records, roles = self.records, self.roles
        summary = _summary(records, self.best, self.cfg, roles, self.o.meta, self.stages, wall)
        skipped = sum(r.get("skipped_nonfinite", 0) for r in self.records)
        if skipped:
            summary["skipped_nonfinite"] = skipped
        _write_json(self.out / SUMMARY, summary)
        from kdspec.runtime.plots import plot_curves

        plot_curves(self.records, self.out / CURVES, title=self.o.label)
        return TrainResult(self.out, self.records, summary, self.model)


def _rank_rng(rng: dict[str, Any], world: int) -> dict[str, Any]:
    """This rank's saved generators (rank 0's when the checkpoint came from another world size)."""
    ranks = rng.get("ranks")
    if world > 1 and isinstance(ranks, list) and len(ranks) == world:
        return ranks[distributed.rank()]
    return rng


def _batch_len(batch: Any) -> int:
    """Examples in a batch (its first tensor's length)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, dict) else batch
    for item in items if isinstance(items, Iterable) else ():
        if isinstance(item, torch.Tensor | list | tuple | dict):
            return _batch_len(item)
    return 1


def _other_job(path: Path) -> Any:
    return error(
        "KD501",
        f"cannot resume: `{path}` was written by a run with other settings",
        help="resume with the same spec, run file and options, or choose a new `--out` folder",
    )


def _nonfinite_diagnostic(
    model: Any, term: str, stage: str, epoch: float, step: int, out: Path
) -> Any:
    """KD503 at the term's line in the spec, with the step and the last good checkpoint."""
    ckpt = out / CHECKPOINT
    kept = (
        f"the last good checkpoint is `{ckpt}` (resume with `--resume` after a fix)"
        if ckpt.is_file()
        else f"no checkpoint yet (it diverged in the first epoch); files kept in `{out}`"
    )
    message = (
        f"non-finite loss in {_term_text(term)} at stage `{stage}`, epoch {epoch + 1:g}, "
        f"step {step + 1}"
    )
    help_text = (
        "lower the learning rate, set `[train] grad_clip`, check the term's weight, or pass "
        "`--on-nonfinite skip` to skip such batches (they are counted)"
    )
    lowered = getattr(model, "lowered", None)
    smap = getattr(lowered, "source_map", None)
    if smap is not None and smap.source is not None and smap.span("term", term) is not None:
        return smap.diagnostic(
            "KD503", message, ("term", term), "not finite here", notes=(kept,), help=help_text
        )
    return error("KD503", message, notes=[kept], help=help_text)


def _term_text(name: str) -> str:
    return name if name.startswith("the ") else f"term `{name}`"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_PROTOCOLS = {
    "last": "test {m} of the last epoch",
    "best_val": "test {m} at the epoch with the best validation {m}",
}


def _summary(
    records: list[dict[str, Any]],
    best: dict[str, Any],
    cfg: TrainConfig,
    roles: list[str],
    meta: dict[str, Any],
    stages: list[StageRun],
    wall: float,
) -> dict[str, Any]:
    last: dict[str, Any] = records[-1] if records else {"epoch": 0, "val": {}, "test": {}}
    final = {
        r: {"epoch": last["epoch"], "val": last["val"].get(r), "test": last["test"].get(r)}
        for r in roles
    }
    best_val = {r: best.get(r, final[r]) for r in roles}
    chosen = best_val if cfg.eval == "best_val" else final
    reported = {r: (chosen[r]["test"] or {}).get("top1") for r in roles}
    metric = METRIC_KINDS[cfg.metric]
    protocol = _PROTOCOLS[cfg.eval].format(m=metric.label.removesuffix(" (%)"))
    if cfg.eval == "best_val" and not best:
        protocol += " (no validation data: last epoch used)"
    return {
        "status": "finished",
        **{k: v for k, v in meta.items() if k != "key"},
        "eval_protocol": {"report": cfg.eval, "description": protocol},
        "reported_test_top1": reported,
        "metric": {
            "name": metric.name,
            "label": metric.label,
            "higher_is_better": metric.higher_is_better,
        },
        "reported_test": {r: (chosen[r]["test"] or {}).get(metric.name) for r in roles},
        "final": final,
        "best_val": best_val,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "stages": [
            {"name": s.name, "epochs": s.epochs, "steps": s.steps, "repeat": s.repeat}
            for s in stages
        ],
        "train": cfg.model_dump(),
        "versions": versions(),
        "platform": {
            "machine": platform.machine(),
            "system": platform.system(),
            "argv": sys.argv[1:],
        },
        "wall_time_s": round(wall, 3),
    }


def _diverged(
    out: Path,
    records: list[dict[str, Any]],
    best: dict[str, Any],
    cfg: TrainConfig,
    roles: list[str],
    meta: dict[str, Any],
    term: str,
    stage: StageRun,
    epoch: float,
) -> None:
    summary = _summary(records, best, cfg, roles, meta, [stage], 0.0)
    summary["status"] = "diverged"
    summary["diverged"] = {"term": term, "stage": stage.name, "epoch": epoch}
    _write_json(out / SUMMARY, summary)
    if records:
        from kdspec.runtime.plots import plot_curves

        plot_curves(records, out / CURVES)
