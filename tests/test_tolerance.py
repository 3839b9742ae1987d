"""The shared tolerance: what it accepts per dtype, and that every test goes through it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tolerance import assert_close, rtol_for

TESTS = Path(__file__).resolve().parent


def test_float32_allows_the_rounding_another_cpu_gives_float64_does_not() -> None:
    exact = torch.tensor([2.0, -3.0, 1e-3], dtype=torch.float64)
    # 4.8e-5 relative: what the Hinton KD term differed by on another processor
    off = exact * (1 + 4.8e-5)
    assert_close(off.float(), exact)
    with pytest.raises(AssertionError):
        assert_close(off, exact)
    with pytest.raises(AssertionError, match="kd term"):
        assert_close((exact * 1.01).float(), exact, what="kd term")


def test_absolute_floor_follows_the_scale_of_the_expected_values() -> None:
    expected = torch.tensor([1000.0, 0.0], dtype=torch.float64)
    assert_close(expected + torch.tensor([0.0, 1e-4], dtype=torch.float64), expected)
    with pytest.raises(AssertionError):
        assert_close(torch.tensor(1e-4, dtype=torch.float64), torch.tensor(0.0))
    assert_close(torch.tensor(1e-7, dtype=torch.float64), 0.0, scale=1.0)


def test_integers_compare_exactly() -> None:
    assert rtol_for(torch.int64) == 0.0
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_no_test_compares_tensors_with_its_own_tolerance() -> None:
    """One helper: a direct torch.testing.assert_close would pick float32 bounds by itself."""
    offenders = [
        f"{p.relative_to(TESTS)}:{i}"
        for p in TESTS.rglob("*.py")
        if p.name != "tolerance.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"torch\.testing\.assert_close|assert_allclose|torch\.allclose", line)
        and p.name != "test_tolerance.py"
    ]
    assert not offenders
