"""Issue 13, front end: hostile spec and run files get diagnostics, never code execution,
exposure of files outside the allowed roots, hangs or internal errors."""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kdspec.api import check_source, read_source
from kdspec.cli.main import main
from kdspec.diagnostics import Diagnostic, KdError, Severity
from kdspec.source import SourceFile

KD = "  transfer softmax(T=4) from t.logits to s.logits with kl"


def _spec(body: str = KD, head: str = "") -> str:
    return f"{head}method m {{\n  teacher t\n  student s\n{body}\n}}\n"


def _errors(text: str, name: str = "x.kd") -> list[Diagnostic]:
    _, diags = check_source(SourceFile(name, text))
    return [d for d in diags if d.severity is Severity.ERROR]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


# -- the parse-table cache -------------------------------------------------------------------


class _Plant:
    """A pickle that, when loaded, creates a marker file (stands in for any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_pickle_planted_in_the_temp_folder_is_never_loaded(tmp_path: Path) -> None:
    import getpass
    import hashlib

    import lark

    from kdspec.syntax.grammar import grammar_text

    marker = tmp_path / "code-ran"
    # lark's default cache name for kdspec's grammar and options (what main used: cache=True)
    options = {
        "parser": "lalr",
        "propagate_positions": True,
        "maybe_placeholders": True,
        "cache": True,
    }
    opt = "".join(k + str(v) for k, v in options.items())
    sha = hashlib.sha256(
        (grammar_text() + opt + lark.__version__ + str(sys.version_info[:2])).encode()
    ).hexdigest()
    planted = (
        tmp_path
        / f".lark_cache_{getpass.getuser()}_{sha}_{sys.version_info[0]}_{sys.version_info[1]}.tmp"
    )
    planted.write_bytes(b"any line\n" + pickle.dumps(_Plant(marker)))  # lark: a line, then pickles
    env = {**os.environ, "TMPDIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "home-cache")}
    code = "from kdspec.syntax import parse_text; parse_text('method m { teacher t student s }')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not marker.exists()
    assert tempfile.gettempdir() != str(tmp_path)  # the planted file was in the child's tmp


def test_the_parser_cache_is_private_and_checked_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdspec.syntax.grammar import parser_cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = parser_cache_file()
    assert path is not None
    assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700
    Path(path).write_bytes(b"x")
    os.chmod(path, 0o666)  # writable by others: not trusted
    assert parser_cache_file() is None
    os.chmod(path, 0o600)
    assert parser_cache_file() == path
    os.chmod(Path(path).parent, 0o755)  # a folder others can read into: not trusted
    assert parser_cache_file() is None


# -- imports ---------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "proj").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.kd").write_text("TOKEN=hunter2\n")
    return tmp_path


@pytest.mark.parametrize(
    "target", ["../outside/secret.kd", "{root}/outside/secret.kd", "link.kd", "/proc/self/environ"]
)
def test_an_import_outside_the_allowed_roots_is_refused_unread(
    tree: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "proj" / "link.kd").symlink_to(tree / "outside" / "secret.kd")
    spec = tree / "proj" / "x.kd"
    spec.write_text(_spec(head=f'import "{target.format(root=tree)}"\n'))
    for command in ("check", "taxonomy", "identify"):
        code, out = _cli(capsys, command, str(spec))
        assert code == 1
        assert "KD105" in out and "not allowed" in out
        assert "hunter2" not in out and "TOKEN" not in out


def test_import_root_on_the_command_line_allows_a_folder(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "outside" / "lib.kd").write_text(_spec().replace("method m", "method other"))
    spec = tree / "proj" / "x.kd"
    spec.write_text(_spec(body=KD + "\n  use other", head='import "../outside/lib.kd"\n'))
    assert _cli(capsys, "check", str(spec))[0] == 1
    code, out = _cli(capsys, "check", "--import-root", str(tree / "outside"), str(spec))
    assert code == 0, out


@pytest.mark.parametrize("kind", ["fifo", "folder", "big", "nul", "long"])
def test_imports_read_only_regular_files_of_bounded_size(tree: Path, kind: str) -> None:
    proj = tree / "proj"
    name = {"nul": "a\0b.kd", "long": "a" * 300 + ".kd"}.get(kind, f"{kind}.kd")
    if kind == "fifo":
        os.mkfifo(proj / name)
    elif kind == "folder":
        (proj / name).mkdir()
    elif kind == "big":
        (proj / name).write_bytes(b"#" * (5 * 1024 * 1024))
    errors = _errors(_spec(head=f'import "{name}"\n'), str(proj / "x.kd"))
    assert [d.code for d in errors] == ["KD105"]


def test_a_device_is_not_read_as_a_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(capsys, "check", "/dev/zero")
    assert code == 1 and "KD105" in out and "not a regular file" in out


# -- encodings -------------------------------------------------------------------------------


def test_non_utf8_input_is_refused_by_check_and_fmt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "x.kd"
    data = _spec(body=KD + "  # caf\xe9").encode("latin-1")
    spec.write_bytes(data)
    for argv in (["check"], ["fmt"], ["fmt", "--check"]):
        code, out = _cli(capsys, *argv, str(spec))
        assert code == 1 and "KD105" in out and "not UTF-8" in out
    assert spec.read_bytes() == data


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    spec = tmp_path / "x.kd"
    spec.write_bytes(b"\xef\xbb\xbf" + _spec().encode())
    source = read_source(spec)
    assert isinstance(source, SourceFile)
    assert _errors(source.text) == []


# -- nesting, overflow, long names -------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "- " * 490 + "1",
        "[" * 490 + "1" + "]" * 490,
        "one(" * 245 + "1" + ")" * 245,
        "one(" * 244 + "1" + ")" * 244,
        "- " * 20000 + "1",
    ],
)
def test_deep_nesting_is_kd106(expr: str) -> None:
    assert [d.code for d in _errors(_spec(f"  param p = {expr}\n{KD} weight p"))] == ["KD106"]


@pytest.mark.parametrize("depth", [40, 90])
def test_nesting_below_the_limit_goes_through_every_command(
    tmp_path: Path, depth: int, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "x.kd"
    spec.write_text(_spec(f"{KD} weight {'- ' * depth}1"))
    for argv in (["check"], ["fmt"], ["ir"], ["graph"], ["taxonomy"], ["identify"], ["check"]):
        code, out = _cli(capsys, *argv, str(spec))
        assert code == 0, (argv, out)


@pytest.mark.parametrize(
    ("where", "expr"),
    [
        ("weight", "2^2^2^2^2^2"),
        ("weight", "1e400"),
        ("weight", "1e308*10"),
        ("use", "1e308*10"),
        ("weight", "0^-1"),
        ("weight", "(0-8)^0.5"),
        ("T", "1e400"),
        ("T", "2^2^2^2^2^2"),
        ("repeat", "1e400"),
        ("param", "1e400"),
    ],
)
def test_overflowing_and_non_finite_numbers_are_check_errors(where: str, expr: str) -> None:
    if where == "weight":
        text = _spec(f"{KD} weight {expr}")
    elif where == "T":
        text = _spec(KD.replace("T=4", f"T={expr}"))
    elif where == "use":
        text = _spec(f"  use hinton(T={expr})")
    elif where == "repeat":
        text = _spec(f"{KD}\n  stage a repeat {expr} {{ train s }}")
    else:
        text = _spec(f"  param p = {expr}\n{KD}")
    codes = [d.code for d in _errors(text)]
    assert codes and set(codes) <= {"KD205", "KD207"}, codes


def test_a_use_of_a_very_long_name_is_kd208() -> None:
    assert [d.code for d in _errors(_spec(f"{KD}\n  use {'a' * 300}"))] == ["KD208"]


def test_a_very_long_unknown_name_is_compared_with_no_word_of_the_language(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # seed 15 of the fuzz: a 5,000-character unknown function took 1-2 CPU s, its edit distance
    # computed against every function; a name far longer than every word cannot be a typo
    from kdspec.ir import lower_core

    compared: list[tuple[str, str]] = []
    real = lower_core._edit_distance

    def counted(a: str, b: str) -> int:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(lower_core, "_edit_distance", counted)
    long = "x" * 5000
    text = _spec(f"  transfer k: from t.logits to {long}(s.logits) with kl\n")
    errors = _errors(text)
    assert [d.code for d in errors] == ["KD203"] and "did you mean" not in (errors[0].help or "")
    assert compared == []
    # a short typo is still compared, and still suggested
    assert "did you mean `softmax`" in (
        _errors(_spec(KD.replace("softmax", "sotfmax")))[0].help or ""
    )
    assert compared


def test_a_nul_in_an_import_path_is_kd105() -> None:
    assert [d.code for d in _errors(_spec(head='import "a\0b.kd"\n'))] == ["KD105"]


# -- run files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["[data]\nseed = " + "[" * 3000 + "]" * 3000, "a = " + "{x=" * 3000 + "1" + "}" * 3000]
)
def test_deeply_nested_toml_is_kd501(text: str) -> None:
    from kdspec.runtime.runfile import parse_run

    with pytest.raises(KdError) as exc:
        parse_run(text)
    assert [d.code for d in exc.value.diagnostics] == ["KD501"]


def test_a_run_file_that_is_not_utf8_is_kd501(tmp_path: Path) -> None:
    from kdspec.runtime.runfile import load_run

    path = tmp_path / "r.toml"
    path.write_bytes(b"[train]\nepochs = 1 # \xff\n")
    with pytest.raises(KdError) as exc:
        load_run(path)
    assert "not UTF-8" in exc.value.diagnostics[0].message


def test_import_roots_hold_for_one_command_only(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "outside" / "lib.kd").write_text(_spec().replace("method m", "method other"))
    spec = tree / "proj" / "x.kd"
    spec.write_text(_spec(body=KD + "\n  use other", head='import "../outside/lib.kd"\n'))
    assert _cli(capsys, "check", "--import-root", str(tree / "outside"), str(spec))[0] == 0
    assert _cli(capsys, "check", str(spec))[0] == 1


def test_uses_composing_deep_expressions_are_kd106() -> None:
    negs = "- " * 90
    parts = [_spec(f"  param p = 1\n{KD} weight p").replace("method m", "method m0")]
    for i in range(1, 15):
        parts.append(
            f"method m{i} {{\n  teacher t\n  student s\n  param p = 1\n"
            f"  use m{i - 1}(p = {negs}p)\n}}\n"
        )
    assert [d.code for d in _errors("".join(reversed(parts)))] == ["KD106"]


def test_a_temperature_that_is_a_call_is_a_diagnostic_not_a_crash() -> None:
    """Found by scripts/fuzz.py (seed 9, case 50,435): a call as `T` made the classifier hash
    an expression holding a dict."""
    text = _spec(
        "  param tau = 1\n"
        "  transfer kd: softmax(one(one(tau))) from t.logits to s.logits with kl weight tau^2"
    )
    assert {d.code for d in _errors(text)} == {"KD203", "KD205"}


def test_every_axis_rule_answers_odd_inputs_with_an_axis_error() -> None:
    """Found by the fuzz run: `weight mean(over=batch)` (a reduction with no input) raised an
    IndexError in the axis rules. Every rule, on any inputs, gives axes, None or AxisError."""
    from kdspec.vocabulary import FUNCTIONS
    from kdspec.vocabulary.axes import AxisError, infer

    for name, fn in FUNCTIONS.items():
        for kw in ({}, {"over": "class"}, {"over": "batch"}, {"over": 1}, {"over": [0, 1]}):
            for ins in ([], [()], [("batch",)], [("batch", "class")], [(), ("batch",)]):
                with contextlib.suppress(AxisError):
                    infer(name, fn.axes, ins, dict(kw))


@pytest.mark.parametrize("call", ["mean(over=batch)", "sum(over=class)", "diag()", "rows()"])
def test_a_reduction_without_its_input_is_checked_without_a_crash(call: str) -> None:
    from kdspec.api import check_source
    from kdspec.source import SourceFile

    text = (
        "method m {\n  teacher t\n  student s\n"
        f"  transfer kd: from t.logits to s.logits with mse\n  weight {call}\n}}\n"
    )
    _, diags = check_source(SourceFile("m.kd", text))  # raised IndexError before
    if call != "mean(over=batch)":  # `mean` without inputs is the combine of no weights
        assert any(d.severity.name == "ERROR" for d in diags)


def test_a_huge_finite_temperature_is_classified_without_overflow() -> None:
    """Found by the fuzz run on the final code: T**2 overflowed in the taxonomy classifier."""
    from kdspec.api import check_source
    from kdspec.source import SourceFile

    text = (
        "method m {\n  teacher t\n  student s\n"
        "  transfer kd: softmax(T=1e200) from t.logits to s.logits with kl\n  weight 2\n}\n"
    )
    from kdspec.graph import build_graph
    from kdspec.taxonomy.classify import classify

    lowered, diags = check_source(SourceFile("m.kd", text))
    assert lowered, diags
    assert classify(build_graph(lowered[0].method)).labels()  # raised OverflowError before


@pytest.mark.parametrize(
    "lets, cycle",
    [
        ("  let a = softmax(t.logits / a)", "a -> a"),
        ("  let a = softmax(t.logits / b)\n  let b = 2 * a", "a -> b -> a"),
    ],
)
def test_a_let_defined_through_itself_is_kd215_not_a_hang(lets: str, cycle: str) -> None:
    """The seed-13 fuzz run: `let tau = temperature(..., span=tau)` in a copy of ctkd made the
    axis typing follow `tau` into itself forever (a hang); a let cycle is now KD215 with the
    cycle in a note, once per cycle, and nothing else is reported about it."""
    text = _spec(f"{lets}\n  transfer from a to softmax(s.logits) with kl")
    errors = _errors(text)
    assert [d.code for d in errors] == ["KD215"]  # one cycle, one diagnostic
    assert errors[0].message == "`let a` is defined through itself"
    assert errors[0].notes == (cycle,)
