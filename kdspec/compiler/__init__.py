"""Checked method graph + ``nn.Module``s -> a trainable :class:`Distiller`."""

from kdspec.compiler.distiller import Distiller, DistillOutput, StagePlan, compile_spec
from kdspec.compiler.taps import ModelTaps, discover
from kdspec.ir.evaluate import Progress

__all__ = [
    "DistillOutput",
    "Distiller",
    "ModelTaps",
    "Progress",
    "StagePlan",
    "compile_spec",
    "discover",
]
