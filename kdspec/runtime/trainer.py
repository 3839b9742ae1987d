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
from kdspec.runtime.data import drops_a_lone_example, eval_loader, train_loader
from kdspec.runtime.files import atomic_write
from kdspec.runtime.metrics import METRICS as METRIC_KINDS
from kdspec.runtime.metrics import evaluate_logits
from kdspec.runtime.runfile import TrainConfig

__all__ = [
    "Callback",
    "StageRun",
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


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(i) for i in x) if isinstance(x, list | tuple) else x


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
            KD501 when ``resume`` finds a checkpoint of a different job.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    dev = torch.device(device) if device is not None else _default_device()
    use_amp = cfg.amp and dev.type == "cuda"
    model.to(dev)
    if reference is not None:
        reference.to(dev)

    loader = train_loader(train_set, batch_size, cfg.seed, num_workers)
    if drops_a_lone_example(train_set, batch_size):
        print(
            f"note: {label or 'training'}: the last batch of each epoch would hold 1 example "
            f"({len(train_set)} examples, batches of {batch_size}); it is left out",  # type: ignore[arg-type]
            file=sys.stderr,
        )
    assert loader.generator is not None
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise KdError([error("KD502", "the training set is empty")])
    stages = plan_stages(model.stage_plans, cfg.epochs, steps_per_epoch)
    fingerprint = _fingerprint(cfg, stages, meta)
    evals = {
        name: eval_loader(ds, eval_batch_size, num_workers)
        for name, ds in (("val", val_set), ("test", test_set))
        if ds is not None and len(ds) > 0  # type: ignore[arg-type]
    }
    roles = model.eval_roles()
    total_steps = sum(s.steps * s.repeat for s in stages)

    seed_everything(cfg.seed)
    ckpt_path = out / CHECKPOINT
    position = {"stage": 0, "repeat": 0, "steps_done": 0, "stage_epoch": 0}
    global_step, global_epoch, elapsed = 0, 0.0, 0.0
    best: dict[str, Any] = {}
    resumed: dict[str, Any] | None = None
    if resume and ckpt_path.exists():
        try:
            resumed = torch.load(ckpt_path, weights_only=True, map_location="cpu")
            if not isinstance(resumed, dict) or "position" not in resumed:
                raise ValueError("not a kdspec training checkpoint")
        except Exception as exc:  # any unreadable file: a diagnostic, and the file is kept
            raise KdError(
                [
                    error(
                        "KD405",
                        f"cannot resume from `{ckpt_path}`: the checkpoint is corrupt",
                        notes=(f"torch.load said: {str(exc).splitlines()[0][:200]}",),
                        help="the file was left as it is; start afresh without `--resume` or with "
                        "another `--out` folder",
                    )
                ]
            ) from None
        if resumed.get("fingerprint") != fingerprint:
            raise KdError(
                [
                    error(
                        "KD501",
                        f"cannot resume: `{ckpt_path}` was written by a run with other settings",
                        help="resume with the same spec, run file and options, "
                        "or choose a new `--out` folder",
                    )
                ]
            )
        position = dict(resumed["position"])
        global_step, global_epoch = int(resumed["global_step"]), float(resumed["global_epoch"])
        elapsed, best = float(resumed["elapsed"]), dict(resumed["best"])
    else:
        for name in (METRICS, SUMMARY, CHECKPOINT):
            (out / name).unlink(missing_ok=True)
    warned_huge = False
    records = _read_records(out / METRICS, global_step)
    # Rewrite metrics.jsonl so lines written after the checkpoint (a crash) are dropped.
    _atomic_write(
        out / METRICS, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records))
    )

    started = time.perf_counter() - elapsed
    _notify(callbacks, "on_train_start", label, total_steps, global_step)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    done = bool(resumed and resumed.get("done"))
    if done and resumed is not None:
        model.load_state_dict(resumed["model"])
    try:
        for stage in stages if not done else []:
            for rep in range(stage.repeat):
                if (stage.index, rep) < (position["stage"], position["repeat"]):
                    continue
                model.set_stage(stage.name)
                model.train()
                params = list({id(p): p for p in model.trainable_parameters()}.values())
                opt = make_optimizer(params, cfg) if params else None
                steps_done, stage_epoch = 0, 0
                if resumed is not None and (stage.index, rep) == (
                    position["stage"],
                    position["repeat"],
                ):
                    model.load_state_dict(resumed["model"])
                    if opt is not None and resumed.get("optimizer"):
                        opt.load_state_dict(resumed["optimizer"])
                    if use_amp and resumed.get("scaler"):
                        scaler.load_state_dict(resumed["scaler"])
                    _set_rng_state(resumed["rng"], loader.generator)
                    steps_done, stage_epoch = position["steps_done"], position["stage_epoch"]
                    resumed = None
                while steps_done < stage.steps:
                    n = min(steps_per_epoch, stage.steps - steps_done)
                    sums: dict[str, float] = {}
                    batches = iter(loader)
                    lr = cfg.lr
                    for _ in range(n):
                        batch = _to(next(batches), dev)
                        lr = cfg.lr * lr_factor(cfg, steps_done, stage.steps, steps_per_epoch)
                        if opt is not None:
                            for group in opt.param_groups:
                                group["lr"] = lr
                        progress = Progress.at(steps_done, steps_per_epoch, stage.steps)
                        with torch.autocast(dev.type, enabled=use_amp):
                            result = model(batch, progress=progress)
                        bad = _non_finite(result)
                        if bad is not None and on_nonfinite == "skip":
                            # no update from this batch; counted in the epoch's record
                            sums["skipped_nonfinite"] = sums.get("skipped_nonfinite", 0.0) + 1
                            model.after_step()
                            steps_done += 1
                            global_step += 1
                            continue
                        if bad is not None:
                            _diverged(
                                out, records, best, cfg, roles, meta, bad, stage, global_epoch
                            )
                            raise KdError(
                                [
                                    _nonfinite_diagnostic(
                                        model, bad, stage.name, global_epoch, global_step, out
                                    )
                                ]
                            )
                        if opt is not None and result.loss.requires_grad:
                            opt.zero_grad(set_to_none=True)
                            scaler.scale(result.loss).backward()
                            if cfg.grad_clip is not None:
                                scaler.unscale_(opt)
                                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                            scaler.step(opt)
                            scaler.update()
                        model.after_step()
                        steps_done += 1
                        global_step += 1
                        values = {"loss": float(result.loss.detach())}
                        values.update({k: float(v.detach()) for k, v in result.terms.items()})
                        for k, v in values.items():
                            sums[k] = sums.get(k, 0.0) + v
                        _notify(callbacks, "on_step", stage.name, values)
                    stage_epoch += 1
                    global_epoch += n / steps_per_epoch
                    skipped_here = int(sums.pop("skipped_nonfinite", 0))
                    counted = n - skipped_here
                    record: dict[str, Any] = {
                        "stage": stage.name,
                        "repeat": rep,
                        "stage_epoch": stage_epoch,
                        "epoch": round(global_epoch, 6),
                        "step": global_step,
                        "lr": lr,
                        "loss": sums.pop("loss") / counted if counted else float("nan"),
                        "terms": {k: v / counted for k, v in sums.items()} if counted else {},
                    }
                    if skipped_here:
                        record["skipped_nonfinite"] = skipped_here
                    if not warned_huge and abs(record["loss"]) > HUGE_LOSS:
                        warned_huge = True  # said once: finite but useless training
                        print(
                            f"warning: {label or 'training'}: epoch loss {record['loss']:.3g} "
                            f"at epoch {global_epoch:g}: the objective is diverging (a tiny "
                            "temperature or a huge weight?); training goes on",
                            file=sys.stderr,
                        )
                    for split, ev_loader in evals.items():
                        record[split] = {
                            r: evaluate_model(_deployed(model, r), ev_loader, dev, reference)
                            for r in roles
                        }
                    record.setdefault("val", {})
                    record.setdefault("test", {})
                    record["time_s"] = round(time.perf_counter() - started, 3)
                    records.append(record)
                    record["metric"] = cfg.metric
                    _update_best(best, record, roles, cfg.metric)
                    with (out / METRICS).open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    _save_checkpoint(
                        ckpt_path,
                        model,
                        opt,
                        scaler if use_amp else None,
                        loader.generator,
                        {
                            "stage": stage.index,
                            "repeat": rep,
                            "steps_done": steps_done,
                            "stage_epoch": stage_epoch,
                        },
                        global_step,
                        global_epoch,
                        time.perf_counter() - started,
                        best,
                        fingerprint,
                    )
                    _notify(callbacks, "on_epoch_end", record)
                model.finish_repeat(last=rep == stage.repeat - 1)
        if not done:
            _save_checkpoint(
                ckpt_path,
                model,
                None,
                None,
                loader.generator,
                position,
                global_step,
                global_epoch,
                time.perf_counter() - started,
                best,
                fingerprint,
                done=True,
            )
    finally:
        _notify(callbacks, "on_train_end")

    models_dir = out / "models"
    models_dir.mkdir(exist_ok=True)
    for role in roles:
        _atomic_write(
            models_dir / f"{role}.pt",
            lambda p, r=role: torch.save(model.roles[r].state_dict(), p),
        )
        predictions = getattr(model, "predictions", {})
        if role in predictions:  # what `predict` adds to the role (SimKD's projector)
            _atomic_write(
                models_dir / f"{role}.predict.pt",
                lambda p, node=predictions[role]: torch.save(node.state_dict(), p),
            )
    summary = _summary(records, best, cfg, roles, meta, stages, time.perf_counter() - started)
    skipped = sum(r.get("skipped_nonfinite", 0) for r in records)
    if skipped:
        summary["skipped_nonfinite"] = skipped
    _write_json(out / SUMMARY, summary)
    from kdspec.runtime.plots import plot_curves

    plot_curves(records, out / CURVES, title=label)
    return TrainResult(out, records, summary, model)


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


def _save_checkpoint(
    path: Path,
    model: Trainable,
    opt: torch.optim.Optimizer | None,
    scaler: Any,
    loader_gen: torch.Generator,
    position: dict[str, int],
    global_step: int,
    global_epoch: float,
    elapsed: float,
    best: dict[str, Any],
    fingerprint: str,
    done: bool = False,
) -> None:
    state = {
        "version": 1,
        "fingerprint": fingerprint,
        "position": position,
        "global_step": global_step,
        "global_epoch": global_epoch,
        "elapsed": elapsed,
        "best": best,
        "done": done,
        "model": model.state_dict(),
        "optimizer": opt.state_dict() if opt is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(loader_gen),
    }
    _atomic_write(path, lambda p: torch.save(state, p))


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
