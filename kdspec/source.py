"""Source files and spans.

Spans are 0-based, half-open character offsets into a :class:`SourceFile`; they are shown to
people as 1-based ``line:col`` (the convention of lark, CPython and rustc).
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

MAX_SOURCE_BYTES = 4 * 1024 * 1024
"""The largest spec file read (the library's largest spec is under 4 KB)."""


def read_regular_file(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO would block forever) and checked with ``fstat`` on the open
    file (no race between the check and the read); devices, FIFOs and folders are refused.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except ValueError:  # a NUL character in the path
        raise OSError(errno.EINVAL, "the path contains a NUL character") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or socket)")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than the limit of {limit:,} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since fstat, or a /proc-like file that reports size 0
        raise OSError(errno.EFBIG, f"larger than the limit of {limit:,} bytes")
    return data


def decode_source(data: bytes) -> str:
    """UTF-8 text of a spec (an optional BOM is dropped); other encodings are refused."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[: exc.start]
        line = bad.count(b"\n") + 1
        col = exc.start - (bad.rfind(b"\n") + 1) + 1
        raise OSError(
            errno.EILSEQ,
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, byte {col}); "
            "save the file as UTF-8",
        ) from None


@dataclass(frozen=True, order=True)
class Span:
    """A half-open character range ``[start, end)`` in one source file."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            object.__setattr__(self, "end", self.start)


@dataclass(frozen=True)
class SourceFile:
    """The text of one ``.kd`` file and the name it is reported under."""

    name: str
    text: str = field(repr=False)

    @classmethod
    def named(cls, path: str | Path) -> SourceFile:
        """A file known by its name only (one that cannot be read or written): a diagnostic
        about it names it in every format and quotes no line."""
        return cls(str(path), "")

    @classmethod
    def read(cls, path: str | Path) -> SourceFile:
        """Read a spec file: a regular file of at most MAX_SOURCE_BYTES, in UTF-8 (a BOM is
        dropped).

        Raises:
            OSError: the file cannot be read, is not a regular file (a FIFO, ``/dev/zero``), is
                too large or is not UTF-8; ``strerror`` says which, without quoting the file.
        """
        return cls(str(path), decode_source(read_regular_file(path, MAX_SOURCE_BYTES)))

    @cached_property
    def _line_starts(self) -> list[int]:
        starts = [0]
        starts.extend(i + 1 for i, ch in enumerate(self.text) if ch == "\n")
        return starts

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a 0-based offset, clamped to the file."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def offset(self, line: int, col: int) -> int:
        """0-based offset of a 1-based (line, column)."""
        line = max(1, min(line, len(self._line_starts)))
        return min(self._line_starts[line - 1] + max(col, 1) - 1, len(self.text))

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, without its newline."""
        starts = self._line_starts
        if not 1 <= line <= len(starts):
            return ""
        end = starts[line] - 1 if line < len(starts) else len(self.text)
        return self.text[starts[line - 1] : end]
