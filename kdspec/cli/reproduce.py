"""``kdspec reproduce EXPERIMENT``: re-run a published experiment end to end.

Experiments:
  omitted-digit   Hinton, Vinyals & Dean 2015, section 3: distil on a transfer set without
                  any 3 and measure how many test 3s the student still recognises, with and
                  without raising the bias of class 3 (chosen on validation data).

Finished runs are stored in ``DIR/cells/`` and not recomputed, so an interrupted reproduction
resumes when the same command is run again.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from pathlib import Path
from typing import Any

from kdspec.cli.common import UsageError, parse_overrides
from kdspec.cli.train import close_progress, job_options

EXPERIMENTS = ("omitted-digit",)
RUN_FILES = {"omitted-digit": "hinton_omitted_digit.toml"}

EPILOG = """examples:
  kdspec reproduce omitted-digit
  kdspec reproduce omitted-digit --seeds 5 --temperatures 2,4,8,20 --out runs-out/omitted"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="re-run a published experiment (omitted-digit)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--seeds", type=int, default=5, help="number of student seeds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--temperatures",
        default="2,4,8,20",
        help="temperatures to choose from on validation (default 2,4,8,20)",
    )
    p.add_argument("--run", dest="run_file", metavar="RUN", help="run file (default: runs/...)")
    p.add_argument("--epochs", type=int, help="override [train] epochs")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter")
    p.add_argument("--out", help="output folder (default: runs-out/<experiment>-<timestamp>)")
    p.add_argument("--cache-dir", help="teacher cache")
    p.add_argument("--device", help="cpu, cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="MOD[,MOD]",
        help="let `import:` sources of the run file import these modules",
    )
    p.set_defaults(run=run)


def default_run_file(experiment: str) -> Path:
    """The run file shipped for an experiment (``runs/`` of a checkout or the wheel)."""
    from kdspec._resources import data_dir

    return data_dir("runs") / RUN_FILES[experiment]


def _floats(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"--temperatures expects positive numbers like 2,4,8,20, got `{text}`")
    return values


def run(args: argparse.Namespace) -> int:
    from kdspec.api import load_method
    from kdspec.runtime import load_run
    from kdspec.runtime.files import output_folder
    from kdspec.runtime.job import check_role_keys
    from kdspec.runtime.omitted_digit import reproduce

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    temps = _floats(args.temperatures)
    path = Path(args.run_file) if args.run_file else default_run_file(args.experiment)
    if not path.exists():
        raise UsageError(f"run file `{path}` not found; pass --run")
    run_cfg = load_run(path)
    if args.epochs is not None:
        run_cfg = run_cfg.with_updates(train={"epochs": args.epochs})
    overrides: dict[str, object] = {**run_cfg.config.params, **parse_overrides(args.param)}
    overrides.pop("T", None)  # chosen on validation from --temperatures

    @functools.cache
    def method(temp: float) -> Any:
        return load_method("hinton", overrides={**overrides, "T": temp})

    check_role_keys(run_cfg, [method(temps[0]).method])  # spec and run errors before training
    seeds = [args.seed + k for k in range(args.seeds)]
    out = output_folder(args.out, args.experiment, resumable=f"reproduce {args.experiment}")
    opts, progress = job_options(args)
    parts = ["kdspec", "reproduce", args.experiment, "--seeds", str(args.seeds)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    parts += ["--temperatures", args.temperatures]
    if args.run_file:
        parts += ["--run", args.run_file]
    if args.epochs is not None:
        parts += ["--epochs", str(args.epochs)]
    for item in args.param or []:
        parts += ["--param", item]
    command = " ".join(shlex.quote(p) for p in parts)
    try:
        results = reproduce(method, run_cfg, seeds, temps, out, opts, command=command)
    finally:
        close_progress(progress)
    print(results["markdown"])
    print(f"command: {command}")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0
