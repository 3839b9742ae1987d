"""``kdspec bench [steps|memory|compile] [--quick] [OPTIONS]``: the figures of docs/performance.md.

``steps`` (default): compiled step / hand-written step per method (kdspec.bench.methods);
``memory``: peak memory of a compiled step / the hand-written one (kdspec.bench.memory);
``compile``: a step with the roles under torch.compile / eager (kdspec.bench.torch_compile).
Each prints ratios, medians over interleaved rounds with their spread, the machine and the
versions; options after the kind go to the benchmark (``kdspec bench steps --help``).
``--quick`` runs the smallest configuration (tiny models, one round): a check that the
benchmark runs here, not a figure.
"""

from __future__ import annotations

import argparse
import importlib

from kdspec.bench import KINDS, QUICK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure step-time and memory ratios against hand-written loops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  kdspec bench --quick\n  kdspec bench --rounds 7 --steps 3\n"
        "  kdspec bench steps --methods hinton,at --teacher resnet20 --student resnet8\n"
        "  kdspec bench memory --rounds 3\n  kdspec bench compile --methods hinton,at",
    )
    p.add_argument("--quick", action="store_true", help="the smallest configuration (a smoke run)")
    p.add_argument("kind", nargs="?", choices=sorted(KINDS), default="steps")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = list(args.options)
    quick = args.quick or "--quick" in options
    options = [o for o in options if o != "--quick"]
    if quick:
        options = [*QUICK[args.kind], *options]  # options given after it still win
    module = importlib.import_module(f"kdspec.bench.{KINDS[args.kind]}")
    from kdspec.runtime.trainer import versions

    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    return int(module.main(options))
