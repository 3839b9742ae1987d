"""Issue 13: commands never clobber or weaken a user's files, and never emit injectable text."""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

import pytest

from kdspec.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
UGLY = "method m {teacher t student s transfer softmax(T=4) from t.logits to s.logits with kl}\n"


def test_fmt_keeps_the_file_mode(tmp_path: Path) -> None:
    spec = tmp_path / "x.kd"
    spec.write_text(UGLY)
    os.chmod(spec, 0o644)
    assert main(["fmt", str(spec)]) == 0
    assert spec.read_text() != UGLY
    assert stat.S_IMODE(spec.stat().st_mode) == 0o644


def test_fmt_writes_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.kd"
    target.write_text(UGLY)
    link = tmp_path / "link.kd"
    link.symlink_to(target)
    assert main(["fmt", str(link)]) == 0
    assert link.is_symlink()
    assert target.read_text() != UGLY
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fmt_on_a_read_only_folder_is_a_diagnostic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    spec = tmp_path / "x.kd"
    spec.write_text(UGLY)
    os.chmod(tmp_path, 0o555)
    try:
        assert main(["fmt", str(spec)]) == 1
    finally:
        os.chmod(tmp_path, 0o755)
    assert "KD105" in capsys.readouterr().err
    assert spec.read_text() == UGLY


def _dot_strings_closed(text: str) -> bool:
    """Every line of DOT output has balanced (unescaped) double quotes."""
    for line in text.splitlines():
        quotes, i = 0, 0
        while i < len(line):
            if line[i] == "\\":
                i += 2
                continue
            quotes += line[i] == '"'
            i += 1
        if quotes % 2:
            return False
    return True


def test_dot_labels_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = 'layer1\\"];  evil [label=\\"pwned'
    spec = tmp_path / "x.kd"
    spec.write_text(
        "method m {\n  teacher t\n  student s\n"
        f'  transfer attention from t."{evil}" to s."{evil}" with mse\n}}\n'
    )
    assert main(["graph", "--format", "dot", str(spec)]) == 0
    out = capsys.readouterr().out
    assert _dot_strings_closed(out)
    assert "\n  evil [" not in out
    node_lines = [line for line in out.splitlines() if "pwned" in line]
    assert node_lines and all(line.lstrip().startswith("n") for line in node_lines)
    assert main(["graph", "--format", "mermaid", str(spec)]) == 0
    mermaid = capsys.readouterr().out
    assert all(line.count('"') % 2 == 0 for line in mermaid.splitlines())


def test_term_lookup_is_indexed() -> None:
    """Checking with claims looks up every term: each lookup must be O(1), not a scan."""
    from kdspec.api import load_method
    from kdspec.ir import models

    body = "\n".join(
        f"  transfer k{i}: softmax(T=4) from t.logits to s.logits with kl" for i in range(300)
    )
    m = load_method("m", text=f"method m {{\n  teacher t\n  student s\n{body}\n}}\n").method
    assert m.term("k299") is m.terms[299] and m.term("nope") is None
    assert m.role("t") is m.roles[0]
    assert models._by_name(m.terms) is models._by_name(m.terms)  # one index, built once


@pytest.mark.parametrize("where", ["missing/x.dot", "."])
def test_graph_output_that_cannot_be_written_is_kd504(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "x.kd"
    spec.write_text(UGLY)
    assert main(["graph", str(spec), "-o", str(tmp_path / where)]) == 1
    assert "KD505" in capsys.readouterr().err


def test_fmt_keeps_a_bom(tmp_path: Path) -> None:
    spec = tmp_path / "bom.kd"
    body = (ROOT / "specs" / "hinton.kd").read_text().replace("\n\n", "\n\n\n", 1)
    spec.write_bytes(codecs.BOM_UTF8 + body.encode())
    assert main(["fmt", str(spec)]) == 0
    data = spec.read_bytes()
    assert data.startswith(codecs.BOM_UTF8) and data.count(codecs.BOM_UTF8) == 1
    assert data[3:].decode() == (ROOT / "specs" / "hinton.kd").read_text()
    assert main(["check", str(spec)]) == 0
