"""Progress output for the training loop: a live ``rich`` bar on a terminal, lines elsewhere.

Both are :class:`~kdspec.runtime.trainer.Callback` implementations (no base class). The bar is
used only when stderr is a TTY and ``CI`` is unset; otherwise one line per epoch is printed.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

__all__ = ["LineProgress", "RichProgress", "make_progress"]


def _fmt_terms(values: dict[str, float], limit: int = 6) -> str:
    items = list(values.items())[:limit]
    return " ".join(f"{k} {v:.4g}" for k, v in items)


def _fmt_metrics(record: dict[str, Any]) -> str:
    metric = record.get("metric", "top1")
    parts = []
    for split in ("val", "test"):
        for role, m in record.get(split, {}).items():
            if metric in ("top1", "top5"):
                parts.append(f"{split} {role} {metric} {m[metric]:.2f}%")
            elif metric in m:
                parts.append(f"{split} {role} {metric} {m[metric]:.4g}")
    return "  ".join(parts)


class LineProgress:
    """One line per epoch (for logs, CI and pipes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.label = ""

    def on_train_start(self, label: str, total_steps: int, done_steps: int) -> None:
        """Remember the run's name."""
        self.label = label

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """Print the epoch's mean loss terms and accuracies."""
        terms = _fmt_terms({"loss": record["loss"], **record["terms"]})
        print(
            f"[{self.label}] epoch {record['epoch']:g} ({record['stage']}) {terms}  "
            f"{_fmt_metrics(record)}",
            file=self.stream,
            flush=True,
        )


class RichProgress:
    """A live bar per run with the running mean of every loss term."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        # The loss/accuracy text is the column that gets cut on a narrow terminal.
        info = Column(ratio=1, no_wrap=True, overflow="ellipsis")
        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", table_column=info),
            console=Console(stderr=True),
            transient=False,
            expand=True,
        )
        self.task: Any = None
        self.ema: dict[str, float] = {}
        self.metrics = ""
        self.started = False

    def on_train_start(self, label: str, total_steps: int, done_steps: int) -> None:
        """Open a bar for this run."""
        if not self.started:
            self.progress.start()
            self.started = True
        self.ema = {}
        self.metrics = ""
        self.task = self.progress.add_task(
            label or "train", total=total_steps, completed=done_steps, info=""
        )

    def on_step(self, stage: str, values: dict[str, float]) -> None:
        """Advance the bar; show exponentially averaged loss terms."""
        for k, v in values.items():
            self.ema[k] = v if k not in self.ema else 0.9 * self.ema[k] + 0.1 * v
        info = f"{stage}: {_fmt_terms(self.ema)}"
        if self.metrics:
            info += f" | {self.metrics}"
        self.progress.update(self.task, advance=1, info=info)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """Show the latest accuracies next to the losses."""
        self.metrics = _fmt_metrics(record)

    def on_train_end(self) -> None:
        """Keep the finished bar on screen."""
        if self.task is not None:
            self.progress.refresh()

    def close(self) -> None:
        """Stop the live display."""
        if self.started:
            self.progress.stop()
            self.started = False


def make_progress(quiet: bool = False) -> Any:
    """The right observer for this terminal (None when ``quiet``)."""
    if quiet:
        return None
    if sys.stderr.isatty() and not os.environ.get("CI"):
        return RichProgress()
    return LineProgress()
