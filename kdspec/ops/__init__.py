"""Torch-level operator library: transforms, losses and adapters, looked up by spec name."""

from kdspec.ops.adapters import ADAPTERS, AdapterShapeError, build_adapter
from kdspec.ops.losses import LOSSES
from kdspec.ops.transforms import TRANSFORMS

__all__ = ["ADAPTERS", "LOSSES", "TRANSFORMS", "AdapterShapeError", "build_adapter"]
