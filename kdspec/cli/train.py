"""``kdspec train SPEC``: distil with a method spec; compare with the student trained alone.

Without ``--run`` the embedded digits job runs: a cached ``cnn_small`` teacher (trained once,
a few seconds), a ``cnn_tiny`` student trained alone and the same student distilled, with the
same seed, data order and budget; a table of test top-1 is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kdspec.cli.common import UsageError, parse_overrides

EPILOG = """examples:
  kdspec train specs/hinton.kd
  kdspec train specs/fitnets.kd --epochs 30 --seed 1
  kdspec train specs/hinton.kd --run runs/cifar100_resnet32x4_resnet8x4.toml --out runs-out/kd
  kdspec train specs/hinton.kd --out runs-out/kd --resume
  kdspec train hinton --param T=8 --param alpha=0.5
  kdspec train hinton --run mydata.toml --allow-import mydata
  torchrun --nproc_per_node=2 -m kdspec train hinton   (DDP: docs/performance.md)

run files (--run): every table and key, the model and data sources (your own Dataset
included), metrics, import permission and the teacher cache are documented in
docs/runfile.md of the kdspec repository."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a method (digits by default) and report test accuracy",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="a .kd file, or a library method name (e.g. `hinton`)")
    p.add_argument("--method", help="which method of the file (default: the first)")
    add_run_options(p)
    p.add_argument("--out", help="output folder (default: runs-out/<method>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train the student alone (default: on without --run, off with one)",
    )
    p.set_defaults(run=run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train, compare and reproduce."""
    p.add_argument("--run", dest="run_file", metavar="RUN", help="a run file (TOML)")
    p.add_argument("--epochs", type=int, help="override [train] epochs")
    p.add_argument("--seed", type=int, help="override [train] seed")
    p.add_argument(
        "--amp",
        choices=["off", "bf16", "fp16"],
        help="override [train] amp: autocast in bf16 or fp16 (fp16 on CUDA only; bf16 on a CPU "
        "without bf16 instructions warns: it is emulated and slow)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override [train] compile: torch.compile the roles' networks",
    )
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter")
    p.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="MOD[,MOD]",
        help="let `import:` model and data sources import these modules (and their "
        "submodules); also KDSPEC_ALLOW_IMPORT or ~/.config/kdspec/config.toml. "
        "A run file cannot allow imports",
    )
    p.add_argument(
        "--on-nonfinite",
        choices=["stop", "skip"],
        default="stop",
        help="at a NaN/inf loss: stop with KD503 (default) or skip the batch and count it",
    )
    p.add_argument(
        "--output-cache",
        choices=["off", "memory", "disk"],
        help="override [output_cache] store: compute frozen teachers' tapped outputs once per "
        "sample and reuse them (disk: a memory-mapped file under the cache dir)",
    )
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="run frozen teachers with batch norm folded into the convolution before it, where "
        "no tap reads inside the pair (faster; tapped values equal to ~1e-6, not bit for bit)",
    )
    p.add_argument("--cache-dir", help="teacher cache (default: $KDSPEC_CACHE or ~/.cache/kdspec)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also log losses, terms, lr and accuracies to TensorBoard under DIR",
    )
    p.add_argument(
        "--callback",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="an observer of the training loop to import and call (repeatable)",
    )


def load_job(args: argparse.Namespace, spec: str, *, with_params: bool = True) -> tuple[Any, Any]:
    """The run (with command-line overrides) and the checked method."""
    from kdspec.api import load_method
    from kdspec.runtime import default_run, load_run

    run = load_run(args.run_file) if args.run_file else default_run()
    updates: dict[str, Any] = {}
    if args.epochs is not None:
        from kdspec.runtime.runfile import MAX_EPOCHS

        if not 1 <= args.epochs <= MAX_EPOCHS:
            raise UsageError(f"--epochs must be between 1 and {MAX_EPOCHS:,}")
        updates["epochs"] = args.epochs
    if args.seed is not None:
        updates["seed"] = args.seed
    if getattr(args, "amp", None) is not None:
        updates["amp"] = False if args.amp == "off" else args.amp
    if getattr(args, "compile", None) is not None:
        updates["compile"] = args.compile
    if updates:
        run = run.with_updates(train=updates)
    if getattr(args, "output_cache", None) is not None:
        run = run.with_updates(output_cache={"store": args.output_cache})
    overrides: dict[str, object] = dict(run.config.params) if with_params else {}
    overrides.update(parse_overrides(getattr(args, "param", None)))
    lowered = load_method(spec, getattr(args, "method", None), overrides)
    return run, lowered


def job_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """Job options and the progress display (close it when done)."""
    from kdspec.runtime.job import JobOptions
    from kdspec.runtime.progress import make_progress

    if args.device:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise UsageError(f"--device {args.device}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"--device {args.device}: CUDA is not available on this machine "
                "(torch was installed without it, or no GPU is visible)"
            )
    progress = make_progress(args.quiet)
    observers = [progress] if progress is not None else []
    observers += _loggers(args)
    opts = JobOptions(
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        allow_import=tuple(args.allow_import),
        device=args.device,
        log=(lambda m: None) if args.quiet else _log,
        callbacks=observers,
        on_nonfinite=getattr(args, "on_nonfinite", "stop"),
        fold_batch_norm=getattr(args, "fold_bn", False),
    )
    return opts, progress


def _loggers(args: argparse.Namespace) -> list[Any]:
    """``--tensorboard`` and ``--callback`` observers."""
    from kdspec.runtime.loggers import TensorBoardLogger, load_callback

    out: list[Any] = []
    if getattr(args, "tensorboard", None):
        try:
            out.append(TensorBoardLogger(args.tensorboard))
        except ImportError:
            raise UsageError(
                "--tensorboard needs the tensorboard package: pip install 'kdspec[tensorboard]'"
            ) from None
    for spec in getattr(args, "callback", None) or []:
        try:
            out.append(load_callback(spec))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def close_progress(progress: Any) -> None:
    """Stop a live display, if one was started."""
    close = getattr(progress, "close", None)
    if close is not None:
        close()


def _out_dir(args: argparse.Namespace, method: str) -> Path:
    """The run folder (:func:`kdspec.runtime.files.output_folder`), or the run to resume."""
    from kdspec.runtime.files import check_writable, out_path, output_folder

    if not args.resume:
        return output_folder(args.out, method)
    if args.out:
        out = out_path(args.out)
        check_writable(out)
        return out
    base = Path("runs-out")
    found = sorted(base.glob(f"{method}-*"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--resume: no earlier run of `{method}` in {base}/; pass --out DIR")
    return found[-1]


def _value_text(metric: str) -> Any:
    digits = 4 if metric == "teacher_cosine" else 2
    return lambda x: "-" if x is None else f"{x:.{digits}f}"


def _delta(metric: str, d: float) -> str:
    return f"{d:+.4f}" if metric == "teacher_cosine" else f"{d:+.2f}"


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from kdspec.runtime import distributed
    from kdspec.runtime.files import write_failure
    from kdspec.runtime.job import (
        baseline_role,
        check_role_keys,
        distill,
        prepare,
        train_baseline,
    )

    args.device = distributed.setup(args.device)  # under torchrun: join the process group
    main = distributed.is_main()
    args.quiet = args.quiet or not main  # rank 0 speaks for the job
    run_cfg, lowered = load_job(args, args.spec)
    check_role_keys(run_cfg, [lowered.method])
    method = lowered.method.name
    out = distributed.broadcast_object(_out_dir(args, method) if main else None)
    want_baseline = args.baseline if args.baseline is not None else not args.run_file
    opts, progress = job_options(args)
    try:
        prep = prepare(lowered, run_cfg, opts)
        result = distill(prep, out, resume=args.resume, opts=opts)
        base = None
        if want_baseline:
            base = train_baseline(prep, out / "baseline", resume=args.resume, opts=opts)
    except OSError as exc:  # a folder made read-only or a disk filled up mid-run
        ckpt = out / "checkpoint.pt"
        kept = (
            f"the last good checkpoint is kept in `{ckpt}`: rerun with `--resume` when the "
            "disk has room"
            if ckpt.is_file()
            else None
        )
        raise write_failure(exc, "run outputs", out, kept=kept) from None
    finally:
        close_progress(progress)
    if not main:
        return 0

    cfg = run_cfg.config
    summary = result.summary
    rows: list[list[str]] = []
    metric = cfg.train.metric
    value_of = _value_text(metric)
    for role, info in prep.teachers.items():
        rows.append([f"teacher {role}", info["source"], value_of(info.get(f"test_{metric}"))])
    brole = baseline_role(lowered.method)
    base_value = None
    if base is not None and brole is not None:
        base_value = base.summary["reported_test"].get(brole.name)
        rows.append([f"{brole.name} alone", prep.sources[brole.name], value_of(base_value)])
    elif brole is not None:
        rows.append([f"{brole.name} alone", prep.sources[brole.name], "not trained (--baseline)"])
    for role, value in summary["reported_test"].items():
        delta = ""
        if (
            base_value is not None
            and value is not None
            and brole is not None
            and role == brole.name
        ):
            delta = _delta(metric, value - base_value)
        rows.append(
            [
                f"{role} distilled ({method})",
                prep.sources.get(role, "(copy)"),
                value_of(value),
                delta,
            ]
        )
    for r in rows:
        r.extend([""] * (4 - len(r)))
    data = cfg.data.source + (
        f" without classes {cfg.data.exclude_classes}" if cfg.data.exclude_classes else ""
    )
    print(
        f"{method} on {data}: seed {cfg.train.seed}, {cfg.train.epochs} epochs, "
        f"{summary['eval_protocol']['description']}"
    )
    label = summary["metric"]["label"]
    print(format_table(rows, ["model", "source", f"test {label}", "vs alone"]))
    for role, info in prep.teachers.items():
        if "cache" in info:
            how = "reused from" if info.get("reused") else "pre-trained now, cached in"
            if info.get("replaced"):  # said even with --quiet: a corrupt entry was retrained
                how = f"the cache entry was not reused ({info['replaced']}); {how}"
            print(f"teacher {role}: {how} {info['cache']}")
        elif "weights" in info:
            print(f"teacher {role}: weights from {info['weights']} (not pre-trained)")
        else:
            print(f"teacher {role}: trained weights from its source, used as is (not pre-trained)")
    if summary.get("skipped_nonfinite"):
        print(f"skipped {summary['skipped_nonfinite']} batches with a non-finite loss")
    print(f"run folder: {out}")
    print(f"curves: {out / 'curves.png'}")
    return 0
