"""Writing run outputs safely: never through a planted symlink, never half-written, never over
a user's files, and a clear diagnostic when the disk is full or the folder is read-only."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kdspec.diagnostics import KdError, error

MIN_FREE_BYTES = 64 * 1024 * 1024
"""Free space a run folder needs before training starts (checkpoints of the zoo's models are a
few MB; a run that cannot write one loses its progress)."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Replace ``path`` by what ``write`` writes to a fresh temporary file beside it.

    The temporary file is made by ``mkstemp`` (``O_EXCL``, random name, mode 0600), so a
    symlink planted at a predictable ``path.tmp`` can never redirect the write; it is renamed
    over ``path`` only when complete, and removed on any failure.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            write(tmp)
        except RuntimeError as exc:  # torch's writer: a full disk is not an OSError there
            raise _as_os_error(exc, path.parent) from exc
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_failure(exc: OSError, what: str, where: Path, *, kept: str | None = None) -> KdError:
    """KD505 for a failed write: the disk is full, the folder is read-only, ..."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason = "the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "permission denied (read-only folder or file)"
    else:
        reason = exc.strerror or str(exc)
    notes = [kept] if kept else []
    return KdError(
        [error("KD505", f"cannot write {what} in `{where}`: {reason}", None, notes=notes)]
    )


def check_writable(folder: Path, need: int = MIN_FREE_BYTES) -> None:
    """KD505 before anything trains if ``folder`` (or the nearest existing parent it will be
    created in) is not a writable folder with ``need`` bytes free."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KdError([error("KD505", f"`{existing}` is a file, not a folder", None)])
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".kdspec-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise write_failure(exc, "files", existing) from None
    free = shutil.disk_usage(existing).free
    if free < need:
        raise KdError(
            [
                error(
                    "KD505",
                    f"only {free / 2**20:.0f} MiB free in `{existing}`; a run needs at least "
                    f"{need / 2**20:.0f} MiB for its checkpoints",
                    None,
                    help="free some space, or choose another folder",
                )
            ]
        )


def fresh_folder(base: Path, name: str) -> Path:
    """A new folder ``base/<name>-<time>`` (``-2``, ``-3`` ... if taken): ``mkdir`` without
    ``exist_ok`` is atomic, so two runs started in the same second never share one."""
    check_writable(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, "the run folder", base) from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100_000):
        path = base / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_failure(exc, "the run folder", base) from None
        return path
    raise KdError([error("KD505", f"no free run folder name in `{base}`", None)])


OUTPUT_MARK = ".kdspec-output"
"""A file kdspec writes into each output folder it creates, holding the command kind: only a
folder marked by the same kind of command (``compare``, ``reproduce``) is continued."""


def output_folder(
    out: str | Path | None,
    name: str,
    *,
    resumable: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The folder a command writes to; it never overwrites or deletes a user's files.

    No ``out``: a new ``runs-out/<name>-<time>[-n]``. A new or empty ``out`` is used as is. An
    ``out`` that holds files gets a unique sub-folder, unless it is an earlier output of the
    same ``resumable`` command (its cached cells are reused). A file is KD505.
    """
    if out is None:
        return _marked(fresh_folder(Path("runs-out"), name), resumable)
    path = out_path(out)
    if path.is_dir() and any(path.iterdir()):
        if resumable is not None and _mark_of(path) == resumable:
            check_writable(path)
            log(f"--out `{path}` holds an earlier `{resumable}`: continuing it")
            return path
        sub = fresh_folder(path, name)
        log(f"--out `{path}` already holds files: writing to `{sub}`")
        return _marked(sub, resumable)
    check_writable(path)
    return _marked(path, resumable)


def out_path(out: str | Path) -> Path:
    """``--out`` as a path; KD505 when it names a file rather than a folder."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise KdError(
            [error("KD505", f"--out `{path}` is a file, not a folder", None, help="name a folder")]
        )
    return path


def _marked(path: Path, kind: str | None) -> Path:
    """Mark a folder as ``kind``'s output; unmarked (``train``) folders are made on first write."""
    if kind is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(exc, "the output folder", path) from None
        atomic_write(path / OUTPUT_MARK, lambda p: p.write_text(kind + "\n"))
    return path


def _mark_of(path: Path) -> str | None:
    mark = path / OUTPUT_MARK
    if mark.is_symlink() or not mark.is_file():
        return None
    try:
        return mark.read_text(encoding="utf-8", errors="replace")[:64].strip()
    except OSError:
        return None


def _as_os_error(exc: BaseException, folder: Path) -> OSError:
    """torch.save reports a full disk as a RuntimeError from its zip writer: make it ENOSPC."""
    if isinstance(exc, OSError):
        return exc
    try:
        full = shutil.disk_usage(folder).free < 1024 * 1024
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, f"{os.strerror(code)} ({str(exc).splitlines()[0][:120]})")


__all__ = [
    "MIN_FREE_BYTES",
    "atomic_write",
    "check_writable",
    "fresh_folder",
    "write_failure",
]
