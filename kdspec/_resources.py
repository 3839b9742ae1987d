"""Locate the data files shipped with kdspec (grammar, method library, run files).

In a wheel they live in ``kdspec/_data/``; in a source checkout, at the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The directory ``grammar``, ``specs`` or ``runs``, from the wheel or the source checkout.

    Every name asked for here is shipped in the wheel by ``[tool.hatch.build.targets.wheel.
    force-include]`` in pyproject.toml (tests/test_packaging.py checks it).
    """
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
