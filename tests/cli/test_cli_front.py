"""The front-end commands as a user runs them: exit codes, formats, no tracebacks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kdspec.cli.main import main
from kdspec.ir.models import Method

ROOT = Path(__file__).resolve().parents[2]
BAD = """method bad {
  teacher t
  student s
  transfer hint: from t.stage[2] to s.stage[2] with kl
}
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_library_is_clean(capsys):
    code, out, _ = run(capsys, "check", str(ROOT / "specs"))
    assert code == 0
    assert "no problems found" in out


@pytest.fixture
def forks(monkeypatch):
    """The children `kdspec check` forks (a thread left by another test would stop it)."""
    from kdspec.cli import check

    forked: list[int] = []
    real = check._fork_check

    def counted(paths, overrides):
        child = real(paths, overrides)
        forked.extend([child[0]] if child else [])
        return child

    monkeypatch.setattr(check.threading, "active_count", lambda: 1)
    monkeypatch.setattr(check, "_fork_check", counted)
    return forked


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_check_in_parallel_reports_what_one_process_does(tmp_path, capsys, forks):
    # a folder of library specs with broken ones among them: each file's diagnostics, in
    # file order, whether one process checks them or three
    for i, spec in enumerate(sorted((ROOT / "specs").glob("*.kd"))[:20]):
        shutil.copy(spec, tmp_path / f"{i:02d}_{spec.name}")
    (tmp_path / "05_bad.kd").write_text(BAD)
    (tmp_path / "13_broken.kd").write_text("method m { teacher t\n")
    (tmp_path / "17_unreadable.kd").write_bytes(b"\xff\xfe\x00method")
    outputs = {}
    for jobs in ("1", "3"):
        code, out, _ = run(capsys, "check", "--format", "json", "--jobs", jobs, str(tmp_path))
        outputs[jobs] = (code, json.loads(out))
    assert len(forks) == 2  # --jobs 3: this process and two children
    assert outputs["1"] == outputs["3"]
    code, records = outputs["3"]
    assert code == 1
    assert [Path(r["file"]).name[:2] for r in records] == ["05", "13", "17"]


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_check_survives_a_worker_that_dies(tmp_path, capsys, monkeypatch, forks):
    # a worker killed (say, out of memory) must not hang the command: the files are checked
    # in the parent instead, with the same result
    import os

    import kdspec.api

    for i, spec in enumerate(sorted((ROOT / "specs").glob("*.kd"))[:6]):
        shutil.copy(spec, tmp_path / f"{i:02d}_{spec.name}")
    (tmp_path / "03_bad.kd").write_text(BAD)
    parent, real = os.getpid(), kdspec.api.check_source

    def dies_in_a_worker(source, overrides=None):
        if os.getpid() != parent:
            os._exit(9)
        return real(source, overrides)

    monkeypatch.setattr(kdspec.api, "check_source", dies_in_a_worker)
    code, out, _ = run(capsys, "check", "--format", "json", "--jobs", "2", str(tmp_path))
    assert code == 1 and len(forks) == 1
    assert {(Path(r["file"]).name, r["code"]) for r in json.loads(out)} == {("03_bad.kd", "KD301")}
    # and a fork that fails (no processes left) is no worker: the same result

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    code, out, _ = run(capsys, "check", "--format", "json", "--jobs", "2", str(tmp_path))
    assert code == 1
    assert {(Path(r["file"]).name, r["code"]) for r in json.loads(out)} == {("03_bad.kd", "KD301")}


def test_check_jobs_default_forks_only_for_large_folders(monkeypatch):
    from kdspec.cli import check

    monkeypatch.setattr(check.os, "sched_getaffinity", lambda _pid: set(range(4)), raising=False)
    monkeypatch.setattr(check.sys, "platform", "linux")
    assert check._jobs(0, 51) == 3  # 51 files: 3 workers of at least 16
    assert check._jobs(0, 15) == 1
    assert check._jobs(2, 51) == 2 and check._jobs(8, 3) == 3
    monkeypatch.setattr(check.threading, "active_count", lambda: 2)
    assert check._jobs(4, 51) == 1  # a process with threads is not forked
    monkeypatch.setattr(check.threading, "active_count", lambda: 1)
    monkeypatch.setattr(check.sys, "platform", "darwin")
    assert check._jobs(4, 51) == 1


def test_check_jobs_must_be_a_positive_number(capsys):
    assert main(["check", "--jobs", "0", str(ROOT / "specs")]) == 2
    assert "expected a number >= 1 or `auto`" in capsys.readouterr().err


def test_check_reports_every_error_in_every_format(tmp_path, capsys):
    bad = tmp_path / "bad.kd"
    bad.write_text(BAD)
    code, _, err = run(capsys, "check", str(bad))
    assert code == 1
    assert "error[KD301]" in err and f"{bad}:4:37" in err and "^^^" in err
    assert "both sides carry" in err
    code, _, err = run(capsys, "check", "--format", "concise", str(bad))
    assert code == 1
    assert f"{bad}:4:37: error[KD301]" in err
    code, out, _ = run(capsys, "check", "--format", "json", str(bad))
    records = json.loads(out)
    assert code == 1 and {r["code"] for r in records} == {"KD301"}
    assert records[0]["line"] == 4 and records[0]["file"] == str(bad)


def test_syntax_errors_and_missing_files_are_diagnostics_not_tracebacks(tmp_path, capsys):
    broken = tmp_path / "broken.kd"
    broken.write_text("method m { teacher t\n")
    code, _, err = run(capsys, "check", str(broken))
    assert code == 1 and "KD103" in err and "Traceback" not in err
    code, _, err = run(capsys, "check", str(tmp_path / "missing.kd"))
    assert code == 1 and "KD105" in err
    binary = tmp_path / "binary.kd"
    binary.write_bytes(b"\xff\xfe\x00method")
    code, _, err = run(capsys, "check", str(binary))
    assert code == 1 and "Traceback" not in err
    # an unreadable file is named in every format (JSON's `file`), with no line to quote
    code, out, _ = run(capsys, "check", "--format", "json", str(binary), str(tmp_path / "no.kd"))
    records = json.loads(out)
    assert [(r["code"], r["file"], r["line"]) for r in records] == [
        ("KD105", str(binary), None),
        ("KD105", str(tmp_path / "no.kd"), None),
    ]


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "check")[0] == 2
    assert run(capsys, "nonsense")[0] == 2
    assert run(capsys, "check", "--param", "noequals", str(ROOT / "specs/hinton.kd"))[0] == 2


def test_param_overrides_are_checked(capsys):
    code, _, err = run(capsys, "check", "--param", "T=-1", str(ROOT / "specs/hinton.kd"))
    assert code == 1 and "KD205" in err
    code, _, err = run(capsys, "check", "--param", "temperature=2", str(ROOT / "specs/hinton.kd"))
    assert code == 1 and "KD209" in err


def test_fmt_check_and_rewrite_keep_files_safe(tmp_path, capsys):
    messy = tmp_path / "messy.kd"
    messy.write_text(
        "# keep me\nmethod m {teacher t   student s\n"
        "transfer softmax(T=4) from t.logits to s.logits with kl  # and me\n}\n"
    )
    code, out, _ = run(capsys, "fmt", "--check", str(messy))
    assert code == 1 and "would reformat" in out
    code, _, _ = run(capsys, "fmt", str(messy))
    text = messy.read_text()
    assert code == 0 and "# keep me" in text and "# and me" in text
    assert "  teacher t\n  student s\n" in text
    assert run(capsys, "fmt", "--check", str(messy))[0] == 0
    broken = tmp_path / "broken.kd"
    broken.write_text("method m {")
    code, _, err = run(capsys, "fmt", str(broken))
    assert code == 1 and "KD103" in err
    assert broken.read_text() == "method m {"  # never loses a user's file


def test_fmt_that_cannot_write_names_the_file(tmp_path, capsys, monkeypatch):
    # a file fmt cannot write (read-only, full disk): KD105 names it, the file is left as it was
    from kdspec.cli import fmt

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    messy = tmp_path / "messy.kd"
    messy.write_text("method m {teacher t   student s}\n")
    monkeypatch.setattr(fmt, "write_atomically", refuse)
    code, _, err = run(capsys, "fmt", str(messy))
    assert code == 1 and "error[KD105]: cannot write" in err and f"--> {messy}" in err
    assert messy.read_text() == "method m {teacher t   student s}\n"


def test_graph_formats(tmp_path, capsys):
    spec = str(ROOT / "specs/fitnets.kd")
    code, out, _ = run(capsys, "graph", spec, "--format", "dot")
    assert code == 0 and out.startswith('digraph "fitnets"') and "teaches" in out
    code, out, _ = run(capsys, "graph", spec, "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR")
    code, out, _ = run(capsys, "graph", spec, "--format", "json")
    graph = json.loads(out)
    assert code == 0 and any(n["type"] == "loss" for n in graph["nodes"])
    png = tmp_path / "g.png"
    code, _, err = run(capsys, "graph", spec, "--format", "png", "-o", str(png))
    if shutil.which("dot"):
        assert code == 0 and png.stat().st_size > 0
    else:
        assert code == 2 and "Graphviz" in err


def test_explain_spec_and_code(capsys):
    code, out, _ = run(capsys, "explain", str(ROOT / "specs/fitnets.kd"))
    assert code == 0
    assert "stage `hints`" in out and "regressor" in out and "t teaches s" in out
    code, out, _ = run(capsys, "explain", "KD305")
    assert code == 0 and "stop-gradient" in out
    assert run(capsys, "explain", "KD999")[0] == 2


def test_ir_json_round_trips_and_schema_is_published(capsys):
    code, out, _ = run(capsys, "ir", str(ROOT / "specs/mean_teacher.kd"))
    assert code == 0
    method = Method.model_validate_json(out)
    assert method.role("m").mode == "ema"
    code, out, _ = run(capsys, "ir", "--schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "Method" and "terms" in schema["properties"]


def test_python_m_kdspec_works():
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "kdspec", "explain", "KD101"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "KD101" in proc.stdout


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "specs").glob("*.kd")))
def test_every_library_spec_explains(spec, capsys):
    code, out, _ = run(capsys, "explain", str(ROOT / "specs" / spec))
    assert code == 0 and "Who:" in out and "When:" in out


def test_explain_says_what_a_role_predicts_when_deployed(capsys):
    code, out, _ = run(capsys, "explain", str(ROOT / "specs" / "simkd.kd"))
    assert code == 0
    assert "Deployed:\n  - `s` predicts t.classifier(pool(proj))" in out
