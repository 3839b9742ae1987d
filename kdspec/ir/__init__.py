"""AST → validated IR (pydantic models) with a source map back to spans."""

from kdspec.ir import models
from kdspec.ir.lower import Lowered, SourceMap, lower_module

__all__ = ["Lowered", "SourceMap", "lower_module", "models"]
