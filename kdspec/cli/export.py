"""``kdspec export SPEC [--run RUN] -o train.py``: the method as a standalone PyTorch script.

The script imports no kdspec: it holds the operators the method uses (copied from kdspec's own
code), the forward hooks, the adapters sized for the run's models, one function per loss term,
the stages and a training loop, plus the run's zoo models; other models and the data are
stubs to fill in. Models are built fresh (no teacher is trained) to size the adapters.
What cannot be written out (views, ``let``, learned losses, EMA roles, ...) is a KD603 error
listing every construct. See docs/ecosystem.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdspec.cli.common import UsageError

EPILOG = """examples:
  kdspec export specs/fitnets.kd -o fitnets_train.py
  kdspec export hinton --run runs/cifar100_resnet56_resnet20.toml -o train.py"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the method as a standalone PyTorch training script",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="a .kd file, or a library method name")
    p.add_argument("--method", help="which method of the file (default: the first)")
    p.add_argument("--run", dest="run_file", metavar="RUN", help="a run file (TOML)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter")
    p.add_argument("--allow-import", action="append", default=[], metavar="PKG")
    p.add_argument("-o", "--output", required=True, help="the script to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=run, epochs=None, seed=None)


def run(args: argparse.Namespace) -> int:
    import torch

    from kdspec.cli.fmt import write_atomically
    from kdspec.cli.train import load_job
    from kdspec.compiler.eject import EjectError, eject
    from kdspec.diagnostics import KdError, error
    from kdspec.runtime.data import build_data
    from kdspec.runtime.job import (
        JobOptions,
        _build,
        _compile,
        _example_batch,
        _source_of,
        model_roles,
    )

    out = Path(args.output)
    if out.exists() and not args.force:
        raise UsageError(f"`{out}` exists (--force overwrites it)")
    run_cfg, lowered = load_job(args, args.spec)
    opts = JobOptions(allow_import=tuple(args.allow_import))
    data = build_data(run_cfg, opts.allow_import)
    models, sources = {}, {}
    for role in model_roles(lowered.method):
        sources[role.name] = _source_of(role, run_cfg, lowered.method)
        torch.manual_seed(0)
        models[role.name] = _build(role.name, sources[role.name], run_cfg, data, opts)
    d = _compile(lowered, models, data, run_cfg, opts)
    m = lowered.method
    try:
        title = f"{m.name}: {m.title or 'knowledge distillation'}"
        text = eject(d, _example_batch(data, run_cfg), sources=sources, title=title)
    except EjectError as exc:
        raise KdError(
            [
                error(
                    "KD603",
                    f"`{lowered.method.name}` cannot be exported as a plain script",
                    notes=tuple(f"not supported: {r}" for r in exc.reasons),
                    help="`kdspec train` and the Python API run every method",
                )
            ]
        ) from None
    write_atomically(out, text)
    print(f"wrote {out} ({len(text.splitlines())} lines): python {out}")
    return 0
