"""What the code reads from kdspec's data folders is shipped in the wheel."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_data_folder_the_code_reads_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    code = "\n".join(p.read_text() for p in (ROOT / "kdspec").rglob("*.py"))
    asked = set(re.findall(r"data_dir\(\"(\w+)\"\)", code))
    assert {"grammar", "specs", "runs"} <= asked
    for name in asked:
        assert shipped.get(name) == f"kdspec/_data/{name}", f"`{name}/` is not in the wheel"
        assert (ROOT / name).is_dir()


def test_reproduce_finds_its_run_file_in_an_installed_layout(tmp_path, monkeypatch) -> None:
    """The wheel layout: data under kdspec/_data, no repository around it."""
    import kdspec._resources as resources
    from kdspec.cli.reproduce import RUN_FILES, default_run_file

    package = tmp_path / "site" / "kdspec"
    for name in ("runs",):
        target = package / "_data" / name
        target.mkdir(parents=True)
        for file in (ROOT / name).iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    monkeypatch.setattr(resources, "_PACKAGE", package)
    for experiment, file in RUN_FILES.items():
        assert default_run_file(experiment) == package / "_data" / "runs" / file
        assert default_run_file(experiment).is_file()


def test_the_built_wheel_holds_the_run_files(tmp_path) -> None:
    import zipfile

    import pytest

    builders = pytest.importorskip("hatchling.builders.wheel")
    wheel = next(iter(builders.WheelBuilder(str(ROOT)).build(directory=str(tmp_path))))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kdspec/_data/runs/hinton_omitted_digit.toml" in names
    assert "kdspec/_data/specs/hinton.kd" in names
    assert "kdspec/_data/grammar/kdspec.lark" in names
