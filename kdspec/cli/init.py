"""``kdspec init NAME``: a starter spec and run file for your own models and data.

Writes ``NAME.kd`` (a library method to start from, renamed ``NAME``, default Hinton KD) and
``NAME.toml`` (a run file binding the roles to your model factories and your dataset through
``import:`` sources), then checks both. Nothing is overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kdspec.cli.common import UsageError, report

EPILOG = """examples:
  kdspec init mykd
  kdspec init mykd --method fitnets --teacher mymodels:big --student mymodels:small \\
      --data mydata:Blobs
  kdspec train mykd.kd --run mykd.toml --allow-import mymodels,mydata"""

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="write a starter spec and run file for your own models and data",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="method and file name (NAME.kd, NAME.toml)")
    p.add_argument("--method", default="hinton", help="library method to start from")
    p.add_argument("--teacher", metavar="MODULE:NAME", help="your teacher model factory")
    p.add_argument("--student", metavar="MODULE:NAME", help="your student model factory")
    p.add_argument("--data", metavar="MODULE:NAME", help="your dataset class or factory")
    p.add_argument("--out-dir", default=".", help="where to write the two files")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(run=run)


def _source(ref: str | None, option: str, default: str) -> str:
    if ref is None:
        return default
    if not _REF.match(ref):
        raise UsageError(f"{option} expects MODULE:NAME (e.g. mymodels:resnet), got `{ref}`")
    return f"import:{ref}"


def starter_spec(name: str, method: str) -> str:
    """The library method's text, renamed ``name``, under a header saying where it came from."""
    from kdspec._resources import library_dir

    path = library_dir() / f"{method}.kd"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in library_dir().glob("*.kd")))
        raise UsageError(f"no library method `{method}` (library: {known})")
    text = path.read_text(encoding="utf-8")
    text, n = re.subn(rf"^method {re.escape(method)}\b", f"method {name}", text, flags=re.M)
    if n != 1:
        raise UsageError(f"cannot rename the library method `{method}`")
    header = (
        f"# {name}: started from the library method `{method}` by `kdspec init`.\n"
        "# Edit the terms, weights and stages; `kdspec check` and `kdspec explain` help.\n"
    )
    return header + text


def starter_run(name: str, teacher: str, student: str, data: str | None) -> str:
    """A run file for the spec: models, data, a short recipe and the command to run it."""
    modules = sorted(
        {s.split(":")[1].split(".")[0] for s in (teacher, student, data or "") if "import:" in s}
    )
    allow = f" --allow-import {','.join(modules)}" if modules else ""
    lines = [
        f"# Run file for {name}.kd, written by `kdspec init` (docs/runfile.md lists every key).",
        f"#   kdspec train {name}.kd --run {name}.toml{allow}",
        "",
        "[models]",
        f't = "{teacher}"',
        f's = "{student}"',
        "",
        "[data]",
    ]
    if data is not None:
        lines += [f'source = "{data}"', "batch_size = 64"]
    else:
        lines += ['source = "digits"   # the embedded digits; your own: "import:MODULE:NAME"']
    lines += [
        "",
        "[train]",
        "epochs = 20",
        'optimizer = "sgd"',
        "lr = 0.05",
        'schedule = "cosine"',
        "seed = 0",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from kdspec.api import check_source
    from kdspec.cli.fmt import write_atomically
    from kdspec.runtime.runfile import parse_run
    from kdspec.source import SourceFile

    if not re.match(r"^[A-Za-z_]\w*$", args.name):
        raise UsageError(f"NAME must be an identifier (letters, digits, _), got `{args.name}`")
    teacher = _source(args.teacher, "--teacher", "zoo:cnn_small")
    student = _source(args.student, "--student", "zoo:cnn_tiny")
    data = _source(args.data, "--data", "") or None
    out = Path(args.out_dir)
    spec_path, run_path = out / f"{args.name}.kd", out / f"{args.name}.toml"
    for target in (spec_path, run_path):
        if target.exists() and not args.force:
            raise UsageError(f"`{target}` exists (--force overwrites it)")
    spec = starter_spec(args.name, args.method)
    run_text = starter_run(args.name, teacher, student, data)
    _, diags = check_source(SourceFile(str(spec_path), spec))
    parse_run(run_text, str(run_path))  # raises KdError if the run file is malformed
    if report(diags):
        return 1
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(spec_path, spec)
    write_atomically(run_path, run_text)
    print(f"wrote {spec_path} and {run_path}")
    print(run_text.splitlines()[1].removeprefix("#").strip())
    return 0
