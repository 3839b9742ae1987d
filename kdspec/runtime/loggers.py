"""Loggers for the training loop, beside ``metrics.jsonl``: TensorBoard and user callbacks.

Both are :class:`~kdspec.runtime.trainer.Callback` observers (no base class). From the command
line: ``kdspec train SPEC --tensorboard DIR`` and ``--callback package.module:factory``.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLogger", "load_callback"]


class TensorBoardLogger:
    """Per-step loss terms, and per-epoch terms, learning rate and evaluation metrics.

    Each run of a job (teacher, student alone, distilled student) writes to its own subfolder
    of ``log_dir``, named after the run's label. Scalars:

    - ``step/loss``, ``step/<term>``: every optimizer step (x = global step);
    - ``epoch/loss``, ``epoch/<term>``, ``epoch/lr``: means over the epoch (x = global step at
      its end, so step and epoch curves share an axis);
    - ``<split>/<role>/top1``, ``<split>/<role>/loss``: evaluation after each epoch.

    Needs the ``tensorboard`` package (``pip install 'kdspec[tensorboard]'``).
    """

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # fails early without tensorboard

        self._writer_cls = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self.step = 0

    def on_train_start(self, label: str, total_steps: int, done_steps: int) -> None:
        """Open a writer for this run (resumed runs continue at their step)."""
        self.close()
        name = re.sub(r"[^\w.-]+", "_", label).strip("_") or "run"
        self.writer = self._writer_cls(str(self.log_dir / name))
        self.step = done_steps

    def on_step(self, stage: str, values: dict[str, float]) -> None:
        """The step's total loss and terms."""
        self.step += 1
        for name, value in values.items():
            self.writer.add_scalar(f"step/{name}", value, self.step)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """The epoch's mean terms, learning rate and every evaluation metric."""
        step = int(record.get("step", self.step))
        self.writer.add_scalar("epoch/loss", record["loss"], step)
        for name, value in record.get("terms", {}).items():
            self.writer.add_scalar(f"epoch/{name}", value, step)
        self.writer.add_scalar("epoch/lr", record["lr"], step)
        for split in ("val", "test"):
            for role, metrics in record.get(split, {}).items():
                for key in ("top1", "loss"):
                    if key in metrics:
                        self.writer.add_scalar(f"{split}/{role}/{key}", metrics[key], step)
        self.writer.flush()

    def on_train_end(self) -> None:
        """Flush and close this run's writer."""
        self.close()

    def close(self) -> None:
        """Close the open writer, if any."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def load_callback(spec: str) -> Any:
    """``package.module:name`` -> an observer: ``name`` itself, or ``name()`` if it is a class
    or a factory (called with no arguments).

    The person running the command names the code to run; nothing in a spec or run file can.

    Raises:
        ValueError: a malformed reference, or one that cannot be imported or found.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--callback expects `package.module:name`, got `{spec}`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--callback {spec}: cannot import `{module_name}` ({exc})") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"--callback {spec}: `{module_name}` has no `{attr}`") from None
    if isinstance(obj, type) or (callable(obj) and not _is_observer(obj)):
        obj = obj()
    if not _is_observer(obj):
        raise ValueError(
            f"--callback {spec}: not an observer (it needs one of on_train_start, on_step, "
            "on_epoch_end, on_train_end)"
        )
    return obj


def _is_observer(obj: Any) -> bool:
    return any(
        hasattr(obj, m) for m in ("on_train_start", "on_step", "on_epoch_end", "on_train_end")
    )
