"""``kdspec compare SPEC...``: methods against the student alone over several seeds.

Every method and the student-alone baseline are trained once per seed with the same teacher
(cached), the same initial student weights and data order per seed, and the same budget.
``DIR/results.md`` reports mean ± std per method and the difference to the baseline with a 95%
confidence interval (paired by seed, t-distribution); ``DIR/compare.png`` plots it. Finished
(method, seed) cells are kept in ``DIR/cells/`` and never recomputed, so rerunning the same
command resumes an interrupted comparison.
"""

from __future__ import annotations

import argparse
import shlex

from kdspec.cli.common import UsageError, parse_overrides
from kdspec.cli.train import add_run_options, close_progress, job_options

EPILOG = """examples:
  kdspec compare specs/hinton.kd specs/fitnets.kd specs/at.kd --seeds 5
  kdspec compare hinton rkd --seeds 3 --epochs 10 --out runs-out/cmp"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare methods with the student alone over seeds",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("specs", nargs="+", help=".kd files or library method names")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    add_run_options(p)
    p.add_argument("--out", help="output folder (default: runs-out/compare-<timestamp>)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdspec.api import load_method
    from kdspec.diagnostics import KdError, error
    from kdspec.runtime import default_run, load_run
    from kdspec.runtime.compare import compare
    from kdspec.runtime.files import output_folder
    from kdspec.runtime.job import check_role_keys

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    run_cfg = load_run(args.run_file) if args.run_file else default_run()
    if args.epochs is not None:
        run_cfg = run_cfg.with_updates(train={"epochs": args.epochs})
    overrides: dict[str, object] = {**run_cfg.config.params, **parse_overrides(args.param)}
    methods = []
    used: set[str] = set()
    for spec in args.specs:
        # Parameters are shared by the methods that declare them; a name no method declares
        # is an error below, so typos do not pass silently.
        declared = set(load_method(spec).method.params)
        mine = {k: v for k, v in overrides.items() if k in declared}
        used |= set(mine)
        methods.append(load_method(spec, overrides=mine))
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise KdError(
            [
                error(
                    "KD209",
                    f"`{name}` is not a parameter of any compared method",
                    help="parameters: "
                    + ", ".join(sorted({p for m in methods for p in m.method.params})),
                )
                for name in unknown
            ]
        )
    check_role_keys(run_cfg, [m.method for m in methods])
    base_seed = args.seed if args.seed is not None else run_cfg.config.train.seed
    seeds = [base_seed + k for k in range(args.seeds)]
    out = output_folder(args.out, "compare", resumable="compare")
    opts, progress = job_options(args)
    command = _command(args)
    try:
        result = compare(methods, run_cfg, seeds, out, opts, command=command)
    finally:
        close_progress(progress)
    print(result.markdown)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}; chart: {out / 'compare.png'}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this comparison."""
    parts = ["kdspec", "compare", *args.specs, "--seeds", str(args.seeds)]
    for flag, value in (
        ("--run", args.run_file),
        ("--epochs", args.epochs),
        ("--seed", args.seed),
        ("--out", args.out),
    ):
        if value is not None:
            parts += [flag, str(value)]
    for item in args.param or []:
        parts += ["--param", item]
    return " ".join(shlex.quote(p) for p in parts)
