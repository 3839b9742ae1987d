"""Source files and spans.

Spans are 0-based, half-open character offsets into a :class:`SourceFile`; they are shown to
people as 1-based ``line:col`` (the convention of lark, CPython and rustc).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path


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
    def read(cls, path: str | Path) -> SourceFile:
        """Read a file as UTF-8 (undecodable bytes are replaced, never fatal)."""
        data = Path(path).read_bytes()
        return cls(str(path), data.decode("utf-8", errors="replace"))

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
