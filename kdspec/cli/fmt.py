"""``kdspec fmt [--check] PATH...``: rewrite specs in the one canonical layout."""

from __future__ import annotations

import argparse
import codecs
import os
import stat
import tempfile
from pathlib import Path

from kdspec.cli.common import report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fmt", help="format specs", description=__doc__)
    p.add_argument("paths", nargs="+")
    p.add_argument("--check", action="store_true", help="only report files that would change")
    p.set_defaults(run=run)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file's text without ever leaving it half-written.

    A symlink is written through (its target changes, the link stays a link) and the file
    keeps its permission bits; the new text goes to a fresh ``mkstemp`` file beside the target
    (never a predictable name) and is renamed over it.
    """
    target = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:  # a new file: what open() would give it
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_BOM = "\ufeff"


def _starts_with_bom(path: str | Path) -> bool:
    """A BOM is read as nothing (``decode_source``); a rewritten file keeps the one it had."""
    with open(path, "rb") as handle:
        return handle.read(3) == codecs.BOM_UTF8


def run(args: argparse.Namespace) -> int:
    from kdspec.api import read_source, spec_files
    from kdspec.diagnostics import Diagnostic, error
    from kdspec.source import SourceFile
    from kdspec.syntax import try_parse
    from kdspec.syntax.fmt import format_module

    diags: list[Diagnostic] = []
    changed = 0
    files = spec_files(args.paths)
    for path in files:
        source = read_source(path)
        if isinstance(source, Diagnostic):
            diags.append(source)
            continue
        module, errs = try_parse(source)
        if module is None:
            diags.extend(errs)  # a file that does not parse is left exactly as it is
            continue
        text = format_module(module, source.text)
        if text == source.text:
            continue
        changed += 1
        if args.check:
            print(f"would reformat {path}")
        else:
            try:
                write_atomically(Path(path), _BOM * _starts_with_bom(path) + text)
            except OSError as exc:  # a read-only file or folder: the file is left as it was
                message = f"cannot write `{path}`: {exc.strerror or exc}"
                diags.append(error("KD105", message, SourceFile.named(path)))
                continue
            print(f"reformatted {path}")
    code = report(diags)
    if args.check and changed:
        return 1
    if not diags:
        print(
            f"{len(files)} file{'s' * (len(files) != 1)} checked, {changed} "
            f"{'would change' if args.check else 'reformatted'}"
        )
    return code
