"""The README's Python example runs as written (one epoch per stage, on the embedded digits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(monkeypatch):
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    monkeypatch.chdir(README.parent)
    scope: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)  # our own README
    out = scope["out"]
    assert set(out.terms) == {"kd", "ce"}  # the last stage of FitNets
    assert bool(torch.isfinite(out.loss.detach()))
