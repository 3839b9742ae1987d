"""``kdspec taps MODEL``: where a model can be tapped (the discovery twin of the compiler).

Runs the model once on a random input and lists the abstract tap points a spec can name
(``input``, ``stage[k]``, ``embedding``, ``logits``) with the module each resolves to, then every
module path with its output shape (for ``role."module.path"`` taps).
"""

from __future__ import annotations

import argparse
import json

from kdspec.cli.common import UsageError

EPILOG = """examples:
  kdspec taps resnet8x4
  kdspec taps zoo:cnn_small --input-shape 1,8,8
  kdspec taps timm:resnet18 --num-classes 100 --no-modules"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "taps",
        help="list a model's tap points and module paths",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a model source (`zoo:resnet8`, `timm:...`) or a zoo name")
    p.add_argument("--input-shape", default="3,32,32", help="one input's shape (default 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="MOD[,MOD]",
        help="let an `import:` source import these modules (also KDSPEC_ALLOW_IMPORT)",
    )
    p.add_argument(
        "--modules",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also list every module path (default: on)",
    )
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=run)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise UsageError(f"--input-shape expects positive integers like 3,32,32, got `{text}`")
    return shape


def run(args: argparse.Namespace) -> int:
    import torch

    from kdspec.cli.train import format_table
    from kdspec.compiler.taps import discover
    from kdspec.runtime import default_run
    from kdspec.runtime.models import SCHEMES, build_model_from_source

    shape = _shape(args.input_shape)
    if args.num_classes < 1:
        raise UsageError("--num-classes must be at least 1")
    source = args.model if args.model.partition(":")[0] in SCHEMES else f"zoo:{args.model}"
    torch.manual_seed(0)
    model = build_model_from_source(
        "model", source, args.num_classes, shape[0], default_run(), args.allow_import
    )
    example = torch.randn(2, *shape)
    taps = discover(model, example)
    n_params = sum(p.numel() for p in model.parameters())
    if args.format == "json":
        print(
            json.dumps(
                {
                    "model": source,
                    "parameters": n_params,
                    "input_shape": list(shape),
                    "stage_source": taps.stage_source,
                    "taps": [
                        dict(zip(("tap", "module", "shape"), r, strict=True)) for r in taps.rows()
                    ],
                    "modules": [
                        dict(zip(("module", "calls", "shape"), r, strict=True))
                        for r in taps.module_rows()
                    ]
                    if args.modules
                    else [],
                },
                indent=2,
            )
        )
        return 0
    print(f"{source}: {n_params:,} parameters, input {list(shape)}; stages: {taps.stage_source}")
    print()
    print(format_table([list(r) for r in taps.rows()], ["tap", "module", "shape"]))
    if args.modules:
        rows = [[path, calls, out] for path, calls, out in taps.module_rows()]
        print()
        print(f'module paths ({len(rows)}; tap one as `role."path"`):')
        print(format_table(rows, ["module", "calls", "output shape"]))
    return 0
