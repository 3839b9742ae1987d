"""Fixtures shared by the IR tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def shallow_stack() -> Iterator[None]:
    """A recursion limit far below the depths the tests use: any recursion would fail."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
