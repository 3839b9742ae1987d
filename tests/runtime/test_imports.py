"""`import:` sources: permission from the person running kdspec, and only real factories called."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kdspec.diagnostics import KdError
from kdspec.runtime import parse_run
from kdspec.runtime.imports import allowed_imports
from kdspec.runtime.models import build_model_from_source

USER_MODULE = """
import os
from os import system
from torch import nn

CALLS = []


def make(num_classes=10, in_channels=1, width=8):
    CALLS.append(width)
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class NotAModel:
    pass


def returns_a_string():
    return "no"


def broken(num_classes=10):
    raise ValueError("my model is broken")
"""


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the user's own module, made the current folder (no PYTHONPATH)."""
    name = f"usermods_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDSPEC_ALLOW_IMPORT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path / name
    sys.modules.pop(name, None)


def _build(source: str, allow: list[str]) -> torch.nn.Module:
    run = parse_run(f'[models]\ns = "{source}"\n', "run.toml")
    return build_model_from_source("s", source, 10, 1, run, allow_import=allow)


def _refused(source: str, allow: list[str]) -> object:
    with pytest.raises(KdError) as info:
        _build(source, allow)
    (diag,) = info.value.diagnostics
    return diag


def test_a_run_file_cannot_allow_its_own_imports() -> None:
    with pytest.raises(KdError) as info:
        parse_run('allow_import = ["os"]\n[models]\nt = "import:os:system"\n', "evil.toml")
    (diag,) = info.value.diagnostics
    assert diag.code == "KD501"
    assert diag.source.line_col(diag.span.start) == (1, 1)
    assert "permission" in diag.message
    assert "--allow-import" in (diag.help or "") and "KDSPEC_ALLOW_IMPORT" in (diag.help or "")


def test_builtins_and_installed_loaders_are_not_factories_even_when_allowed() -> None:
    diag = _refused("import:os:system", ["os"])
    assert diag.code == "KD406" and "not a model factory" in diag.message
    diag = _refused("import:torch.hub:load", ["torch"])
    assert diag.code == "KD406" and "installed package" in diag.message
    diag = _refused("import:subprocess:run", ["subprocess"])
    assert diag.code == "KD406"


def test_a_users_own_module_in_the_current_folder_imports_without_pythonpath(
    user_dir: Path,
) -> None:
    mod = user_dir.name
    model = _build(f"import:{mod}:Net", [mod])
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert _build(f"import:{mod}:make", [mod]) is not None
    assert sys.modules[mod].CALLS == [8]
    # Names that are not factories are refused before anything is called.
    assert "not an `nn.Module`" in _refused(f"import:{mod}:NotAModel", [mod]).message
    assert _refused(f"import:{mod}:system", [mod]).code == "KD406"  # re-exported builtin
    diag = _refused(f"import:{mod}:returns_a_string", [mod])  # called, then refused
    assert "not an `nn.Module`" in diag.message
    assert sys.modules[mod].CALLS == [8]


def test_errors_in_the_users_code_are_diagnostics_that_say_where(user_dir: Path) -> None:
    mod = user_dir.name
    diag = _refused(f"import:{mod}:broken", [mod])
    assert diag.code == "KD404"
    assert "raised ValueError: my model is broken" in diag.message
    assert f"{mod}.py:" in (diag.help or "")
    (user_dir.parent / "crashes_on_import.py").write_text("x = 1 / 0\n")
    diag = _refused("import:crashes_on_import:Net", ["crashes_on_import"])
    assert "raised ZeroDivisionError" in diag.message
    sys.modules.pop("crashes_on_import", None)


def test_a_missing_module_says_where_kdspec_looked(user_dir: Path) -> None:
    diag = _refused("import:nosuchmodule_xyz:make", ["nosuchmodule_xyz"])
    assert diag.code == "KD404"
    assert "current folder" in (diag.help or "") and "PYTHONPATH" in (diag.help or "")


def test_permission_from_the_environment_and_the_user_config(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = user_dir.name
    assert _refused(f"import:{mod}:Net", []).code == "KD406"
    monkeypatch.setenv("KDSPEC_ALLOW_IMPORT", f"other, {mod}")
    assert allowed_imports(["a,b"]) == ("a", "b", "other", mod)
    assert _build(f"import:{mod}:Net", []) is not None
    monkeypatch.delenv("KDSPEC_ALLOW_IMPORT")
    config = user_dir.parent / "config" / "kdspec" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'allow_import = ["{mod}"]\n')
    assert _build(f"import:{mod}:Net", []) is not None
