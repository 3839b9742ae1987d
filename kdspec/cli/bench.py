"""``kdspec bench [steps|memory|compile] [OPTIONS]``: the figures of docs/performance.md.

``steps`` (default): compiled step / hand-written step per method (scripts/bench_methods.py);
``memory``: peak memory of a compiled step / the hand-written one (scripts/bench_memory.py);
``compile``: a step with the roles under torch.compile / eager (scripts/bench_compile.py).
Each prints ratios, medians over interleaved rounds with their spread, the machine and the
versions; options after the kind go to the script (``kdspec bench steps --help``). The
benchmarks live in a source checkout's ``scripts/`` folder, beside the hand-written loops they
compare with.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

SCRIPTS = {"steps": "bench_methods.py", "memory": "bench_memory.py", "compile": "bench_compile.py"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure step-time and memory ratios against hand-written loops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  kdspec bench --rounds 7 --steps 3\n"
        "  kdspec bench steps --methods hinton,at --teacher resnet20 --student resnet8\n"
        "  kdspec bench memory --rounds 3\n  kdspec bench compile --methods hinton,at",
    )
    p.add_argument("kind", nargs="?", choices=sorted(SCRIPTS), default="steps")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark script")
    p.set_defaults(run=run)


def scripts_dir() -> Path:
    """The source checkout's ``scripts/`` folder."""
    return Path(__file__).resolve().parents[2] / "scripts"


def run(args: argparse.Namespace) -> int:
    from kdspec.cli.common import UsageError

    path = scripts_dir() / SCRIPTS[args.kind]
    if not path.is_file():
        raise UsageError(
            f"`kdspec bench` runs {SCRIPTS[args.kind]} from a source checkout's scripts/ "
            f"folder, and `{path.parent}` has none: clone the kdspec repository and install "
            "it with `pip install -e .`"
        )
    spec = importlib.util.spec_from_file_location(f"_kdspec_bench_{args.kind}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    from kdspec.runtime.trainer import versions

    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    sys.path.insert(0, str(path.parent))  # the memory benchmark imports the step one
    try:
        spec.loader.exec_module(module)
        return int(module.main(list(args.options)))
    finally:
        sys.path.remove(str(path.parent))
