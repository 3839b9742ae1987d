"""Diagnostics: the data (:mod:`.model`), the code registry (:mod:`.codes`), the renderers."""

from kdspec.diagnostics.codes import CODES, describe
from kdspec.diagnostics.model import Diagnostic, KdError, Label, Severity, error, warning
from kdspec.diagnostics.render import render, render_many, summary_line

__all__ = [
    "CODES",
    "Diagnostic",
    "KdError",
    "Label",
    "Severity",
    "describe",
    "error",
    "render",
    "render_many",
    "summary_line",
    "warning",
]
