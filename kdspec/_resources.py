"""Locate the data files shipped with kdspec (grammar, method library).

In a wheel they live in ``kdspec/_data/``; in a source checkout, at the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The directory ``grammar`` or ``specs``, from the wheel or from the source checkout."""
    packaged = _PACKAGE / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name


def grammar_path() -> Path:
    """Path of ``kdspec.lark``."""
    return data_dir("grammar") / "kdspec.lark"


def library_dir() -> Path:
    """The method library (``specs/``)."""
    return data_dir("specs")
