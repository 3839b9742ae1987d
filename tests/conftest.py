"""Shared test setup: the ``--update-golden`` flag, seeding, and hypothesis profiles."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

_HAS_TORCH = importlib.util.find_spec("torch") is not None

try:
    from hypothesis import settings
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
else:
    settings.register_profile("ci", derandomize=True, deadline=None, max_examples=100)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the expected files under tests/golden/ instead of comparing with them",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether ``--update-golden`` was given."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    if _HAS_TORCH:
        import torch

        torch.manual_seed(0)


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher cache for the whole run: the digits teacher is trained once, then reused."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(autouse=True)
def _shared_teacher_cache(teacher_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Teachers go to the run's shared cache, never to the user's ``~/.cache/kdspec``.

    A test that checks the cache itself passes ``--cache-dir`` or sets ``KDSPEC_CACHE``.
    """
    monkeypatch.setenv("KDSPEC_CACHE", str(teacher_cache))
