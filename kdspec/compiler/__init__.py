"""Checked method graph + ``nn.Module``s -> a trainable :class:`Distiller`."""

from kdspec.compiler.distiller import Distiller, DistillOutput, StagePlan, compile_spec
from kdspec.compiler.plan import CompiledPlan
from kdspec.compiler.stages import StageLoop, StageRun, plan_stages
from kdspec.compiler.taps import ModelTaps, discover
from kdspec.ir.evaluate import Progress

__all__ = [
    "CompiledPlan",
    "DistillOutput",
    "Distiller",
    "ModelTaps",
    "Progress",
    "StageLoop",
    "StagePlan",
    "StageRun",
    "compile_spec",
    "discover",
    "plan_stages",
]
