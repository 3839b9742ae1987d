"""Mixed precision for a training step: which autocast a run gets, and what is refused.

``[train] amp`` (or ``kdspec train --amp``): ``false`` (default), ``"bf16"``, ``"fp16"``, or
``true`` for the device's usual kind (fp16 on CUDA, with a gradient scaler; bf16 on CPU).

- fp16 on CPU is refused (slow, and no gradient scaler there): use bf16.
- bf16 on a CPU without native bf16 instructions (``avx512_bf16``/``amx_bf16`` on x86,
  ``bf16`` on Arm) is allowed only with a warning: emulated bf16 made a teacher's forward 39x
  slower on such a machine (issue 11). It is never a default.
- bf16 on a GPU without bf16 support is refused.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdspec.diagnostics import KdError, error

__all__ = ["Precision", "compile_roles", "cpu_has_native_bf16", "precision_for"]


@dataclass(frozen=True)
class Precision:
    """The autocast of a run: off, or a dtype on a device type, with or without a scaler."""

    enabled: bool = False
    dtype: torch.dtype | None = None
    scaler: bool = False  # fp16 on CUDA: gradients scaled against underflow

    def autocast(self, device_type: str) -> torch.autocast:
        """The context a step's forward runs in."""
        return torch.autocast(device_type, dtype=self.dtype, enabled=self.enabled)

    @property
    def name(self) -> str:
        """``"off"``, ``"bf16"`` or ``"fp16"``."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "off")  # type: ignore[arg-type]


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions (None: cannot tell on this system)."""
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return None
    flags = set(info.read_text(errors="replace").split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def precision_for(amp: bool | str, device: torch.device, *, warn: bool = True) -> Precision:
    """The autocast ``amp`` asks for on ``device`` (see the module doc).

    Raises:
        KdError: KD501 for fp16 on CPU, bf16 on a GPU without it, or another device type.
    """
    if amp is False or amp == "off":
        return Precision()
    kind = device.type
    if kind not in ("cpu", "cuda"):
        raise KdError([error("KD501", f"mixed precision (`amp`) is not supported on `{kind}`")])
    wanted = ("fp16" if kind == "cuda" else "bf16") if amp is True else str(amp)
    if wanted == "fp16":
        if kind == "cpu":
            raise KdError(
                [
                    error(
                        "KD501",
                        "fp16 autocast on the CPU is refused: it is slow there and has no "
                        "gradient scaler",
                        help='use `amp = "bf16"` (`--amp bf16`), or train on a GPU',
                    )
                ]
            )
        return Precision(True, torch.float16, scaler=True)
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise KdError(
            [
                error(
                    "KD501",
                    "this GPU does not support bf16",
                    help='use `amp = "fp16"` (`--amp fp16`)',
                )
            ]
        )
    if kind == "cpu" and warn and not cpu_has_native_bf16():
        known = cpu_has_native_bf16() is not None
        print(
            "warning: bf16 autocast on a CPU "
            + ("without native bf16 instructions" if known else "whose bf16 support is unknown")
            + ": bf16 is emulated there and can be many times slower than float32 (a teacher "
            "forward ran 39x slower); drop `--amp` / `[train] amp` unless you measured it",
            file=sys.stderr,
        )
    return Precision(True, torch.bfloat16)


def compile_roles(model: Any, backend: str | Any = "inductor") -> int:
    """``torch.compile`` every role's network in place (its ``forward``; weights, state-dict
    keys and hooks stay as they are); returns how many were compiled.

    Taps' hooks on submodules run inside the compiled forward without breaking its graph; a
    frozen role then runs to its end rather than stopping after its last tap (the exception
    that stops it would break the graph).
    """
    roles = getattr(model, "roles", None)
    if roles is None:
        return 0
    for network in roles.values():
        if not getattr(network, "_kdspec_compiled", False):  # once, whoever trains it again
            network.forward = torch.compile(network.forward, backend=backend)
            network._kdspec_compiled = True
    if hasattr(model, "stop_frozen_early"):
        model.stop_frozen_early = False
    return len(roles)
