"""``kdspec plan SPEC [--run RUN]``: what a method compiles to on the run's models, untrained.

Builds the run's data and models (teachers are not pre-trained: a plan needs shapes, not
weights), compiles the method, and prints the plan: every tap resolved to module paths with
their shapes, every adapter with its size, every term's loss and weight, and every stage with
what it trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from kdspec.cli.train import add_run_options, job_options, load_job

EPILOG = """examples:
  kdspec plan specs/fitnets.kd
  kdspec plan specs/at.kd --run runs/cifar100_resnet56_resnet20.toml --format json"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="print what a method compiles to on the run's models (taps, adapters, stages)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="a .kd file, or a library method name (e.g. `fitnets`)")
    p.add_argument("--method", help="which method of the file (default: the first)")
    add_run_options(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdspec.runtime.job import check_role_keys, compile_prepared, prepare

    run_cfg, lowered = load_job(args, args.spec)
    check_role_keys(run_cfg, [lowered.method])
    opts, _ = job_options(argparse.Namespace(**{**vars(args), "quiet": True}))
    opts = dataclasses.replace(opts, untrained=True)
    plan = compile_prepared(prepare(lowered, run_cfg, opts), opts).compiled_plan()
    if args.format == "json":
        print(json.dumps(dataclasses.asdict(plan.describe()), indent=2))
    else:
        print(plan.explain(), end="")
    return 0
