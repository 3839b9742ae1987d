"""docs/runfile.md: every run-file key documented, every example valid, the examples run."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from kdspec.cli.main import main
from kdspec.runtime import parse_run
from kdspec.runtime.models import SCHEMES
from kdspec.runtime.runfile import RunConfig

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "runfile.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.S)


def _section(table: str) -> str:
    """The doc's text for one table: from its heading to the next `## ` heading."""
    start = DOC.index(f"## `[{table}]`")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else len(DOC)]


def test_every_table_and_key_is_documented_in_its_section() -> None:
    for table, field in RunConfig.model_fields.items():
        section = _section(table)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            inherited = "every key of\n`[train]`" in section or "every key of `[train]`" in section
            for key in ann.model_fields:
                if (
                    table == "teacher"
                    and inherited
                    and key in RunConfig.model_fields["train"].annotation.model_fields
                ):
                    continue
                assert f"`{key}`" in section, f"[{table}] {key} is not documented"


def test_every_source_scheme_is_documented() -> None:
    for scheme in SCHEMES:
        assert f"| `{scheme}:" in DOC, scheme
    for source in ("digits", "synthetic", "torchvision:CIFAR10", "torchvision:ImageFolder"):
        assert f"`{source}`" in DOC


@pytest.mark.parametrize("text", [t for kind, t in BLOCKS if kind == "toml"])
def test_every_toml_example_is_a_valid_run_file(text: str, tmp_path: Path) -> None:
    parse_run(text, "example.toml", base_dir=tmp_path)


def test_train_help_points_to_the_document(capsys) -> None:
    assert main(["train", "--help"]) == 0
    assert "docs/runfile.md" in capsys.readouterr().out


def test_the_own_data_example_and_the_python_example_run(tmp_path, monkeypatch, capsys) -> None:
    """The user's Dataset trains through the run file; Python then gets the cached teacher."""
    files = {}
    for _, text in BLOCKS:
        name = re.match(r"# file: (\S+)\n", text)
        if name:
            files[name.group(1)] = text
            (tmp_path / name.group(1)).write_text(text)
    assert {"mydata.py", "mydata.toml", "own_loop.py"} <= set(files)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KDSPEC_ALLOW_IMPORT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    sys.modules.pop("mydata", None)
    try:
        command = re.search(r"kdspec (train hinton --run mydata\.toml .*)", DOC).group(1)
        assert main([*command.split(), "--quiet", "--out", "out"]) == 0
        assert "s distilled (hinton)" in capsys.readouterr().out
        scope = runpy.run_path(str(tmp_path / "own_loop.py"))
    finally:
        sys.modules.pop("mydata", None)
    prep = scope["prep"]
    assert prep.teachers["t"]["reused"] is True  # the teacher `kdspec train` cached
    assert len(scope["train_set"]) == len(prep.data.splits.train) > 0
