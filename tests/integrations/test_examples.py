"""The documented integration examples run as written."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("script", "needs"),
    [("hf_trainer.py", ("transformers", "accelerate")), ("lightning_fit.py", ("lightning",))],
)
def test_example_runs(script: str, needs: tuple[str, ...], tmp_path, monkeypatch, capsys) -> None:
    for package in needs:
        pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    student = scope["student"]
    assert student is scope["distiller"].roles["s"]
    out = capsys.readouterr().out
    assert "kd" in out and "ce" in out
