"""``kdspec import torchdistill CONFIG.yaml``: a torchdistill config as a spec and a run file.

Writes ``NAME.kd`` and ``NAME.toml`` (NAME: the config's file name, or ``--name``) into
``--out-dir`` (default: the current folder), then checks the spec. Every setting that has no
kdspec counterpart is a KD601 diagnostic pointing at its line in the YAML; an error there
means the spec does not say everything the config did, and nothing is written unless
``--partial`` is given. Needs PyYAML (``pip install 'kdspec[torchdistill]'``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdspec.cli.common import UsageError, report

EPILOG = """examples:
  kdspec import torchdistill configs/sample/cifar10/kd/resnet20_from_resnet56.yaml
  kdspec import torchdistill at.yaml --name at_imagenet --out-dir imported/
  kdspec train imported/at_imagenet.kd --run imported/at_imagenet.toml"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="translate another tool's config (torchdistill) into a spec and a run file",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("tool", choices=["torchdistill"], help="the config's tool")
    p.add_argument("config", help="a torchdistill YAML config")
    p.add_argument("--name", help="method and file name (default: from the config's file name)")
    p.add_argument("--out-dir", default=".", help="where to write NAME.kd and NAME.toml")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument(
        "--partial", action="store_true", help="write the files even if something is untranslated"
    )
    p.add_argument("--format", choices=["full", "concise", "json"], default="full")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from kdspec.interop.torchdistill import convert
    except ModuleNotFoundError as exc:
        if exc.name != "yaml":
            raise
        raise UsageError(
            "importing torchdistill configs needs PyYAML: pip install pyyaml"
        ) from None
    from kdspec.api import check_source
    from kdspec.cli.fmt import write_atomically
    from kdspec.source import SourceFile
    from kdspec.syntax import try_parse
    from kdspec.syntax.fmt import format_module

    path = Path(args.config)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read `{path}`: {exc.strerror or exc}") from None
    stem = args.name or path.stem
    result = convert(text, str(path), method=stem.replace("-", "_"))
    diags = list(result.diagnostics)
    out_dir = Path(args.out_dir)
    spec_path, run_path = out_dir / f"{stem}.kd", out_dir / f"{stem}.toml"
    if result.spec:
        spec_source = SourceFile(str(spec_path), result.spec)
        module, _ = try_parse(spec_source)
        spec_text = format_module(module, result.spec) if module is not None else result.spec
        diags += check_source(SourceFile(str(spec_path), spec_text))[1]
    if not result.spec or (not result.ok and not args.partial):
        report(diags, args.format)
        print("nothing written (untranslated settings are errors; --partial writes anyway)")
        return 1
    for target in (spec_path, run_path):
        if target.exists() and not args.force:
            report(diags, args.format)
            raise UsageError(f"`{target}` exists (--force overwrites it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(spec_path, spec_text)
    write_atomically(run_path, result.run)
    code = report(diags, args.format)
    print(f"wrote {spec_path} and {run_path}")
    print(f"next: kdspec train {spec_path} --run {run_path}")
    return code
