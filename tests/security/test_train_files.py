"""Issue 13: `kdspec train` never loses a user's files and reports unwritable outputs as KD505."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdspec.cli.main import main
from kdspec.runtime import files

TINY = """
[data]
source = "synthetic"
n = 64
num_classes = 4
input_shape = [1, 8, 8]
batch_size = 16

[train]
epochs = 1

[teacher]
epochs = 1
"""


def _train(capsys, tmp_path: Path, *argv: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    run = tmp_path / "tiny.toml"
    run.write_text(TINY)
    code = main(["train", "hinton", "--run", str(run), "--quiet", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_out_naming_a_folder_with_files_never_touches_them(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mine = tmp_path / "mine"
    mine.mkdir()
    precious = {"metrics.jsonl": "my notes\n", "summary.json": "{}", "checkpoint.pt": "x"}
    for name, text in precious.items():
        (mine / name).write_text(text)
    code, out = _train(capsys, tmp_path, "--out", str(mine), "--cache-dir", str(tmp_path / "c"))
    assert code == 0, out
    for name, text in precious.items():
        assert (mine / name).read_text() == text
    subs = [p for p in mine.iterdir() if p.is_dir()]
    assert len(subs) == 1 and (subs[0] / "summary.json").is_file()
    assert str(subs[0]) in out


def test_out_naming_a_file_is_kd504(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "file"
    target.write_text("keep")
    code, out = _train(capsys, tmp_path, "--out", str(target))
    assert code == 1 and "KD505" in out and "internal error" not in out
    assert target.read_text() == "keep"


def test_default_folders_are_unique(tmp_path: Path) -> None:
    made = {files.fresh_folder(tmp_path, "hinton") for _ in range(5)}
    assert len(made) == 5 and all(p.is_dir() for p in made)


def test_atomic_write_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "checkpoint.pt.tmp").symlink_to(victim)
    files.atomic_write(tmp_path / "checkpoint.pt", lambda p: p.write_text("new"))
    assert victim.read_text() == "precious"
    assert (tmp_path / "checkpoint.pt").read_text() == "new"


def test_a_full_disk_in_torch_save_is_enospc(tmp_path: Path) -> None:
    def failing(path: Path) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed")

    with pytest.raises(OSError):
        files.atomic_write(tmp_path / "checkpoint.pt", failing)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_too_little_free_space_is_kd504_before_training(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from kdspec.diagnostics import KdError

    real = shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(KdError) as exc:
        files.check_writable(tmp_path / "new")
    assert exc.value.diagnostics[0].code == "KD505"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_kd504(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        code, out = _train(capsys, tmp_path, "--out", str(ro / "run"))
    finally:
        os.chmod(ro, 0o755)
    assert code == 1 and "KD505" in out


@pytest.mark.parametrize("odd", ["entry-is-a-file", "sidecar-is-a-folder", "training-is-a-link"])
def test_an_odd_teacher_cache_entry_is_kd504(capsys, tmp_path: Path, odd: str) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    code, out = _train(capsys, tmp_path, "--out", str(tmp_path / "a"), "--cache-dir", str(cache))
    assert code == 0, out
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    if odd == "entry-is-a-file":
        import shutil

        shutil.rmtree(entry)
        entry.write_text("a file where the entry should be")
    elif odd == "sidecar-is-a-folder":
        (entry / "teacher.json").unlink()
        (entry / "teacher.json").mkdir()
    else:  # another user's link: training files would land in the victim folder
        import shutil

        victim = tmp_path / "victim"
        victim.mkdir()
        shutil.rmtree(entry / "training", ignore_errors=True)
        (entry / "training").symlink_to(victim)
    code, out = _train(capsys, tmp_path, "--out", str(tmp_path / "b"), "--cache-dir", str(cache))
    assert code == 1 and "KD505" in out and "internal error" not in out


def test_a_corrupt_teacher_cache_entry_is_retrained_with_one_line(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    code, _ = _train(capsys, tmp_path, "--out", str(tmp_path / "a"), "--cache-dir", str(cache))
    assert code == 0
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    weights = entry / "teacher.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    code, out = _train(capsys, tmp_path, "--out", str(tmp_path / "b"), "--cache-dir", str(cache))
    assert code == 0
    assert out.count("not reused") == 1 and "corrupt" in out  # said once, even with --quiet


def test_a_disk_full_mid_run_is_kd504_and_keeps_the_last_checkpoint(
    capsys, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import errno

    from kdspec.runtime import checkpoint

    real = checkpoint.atomic_write
    calls = {"checkpoint": 0}

    def filling(path: Path, write) -> None:  # type: ignore[no-untyped-def]
        if path == out / "checkpoint.pt":  # the distillation's, not the teacher's
            calls["checkpoint"] += 1
            if calls["checkpoint"] > 1:  # the disk fills after the first good checkpoint
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    out = tmp_path / "out"
    monkeypatch.setattr(checkpoint, "atomic_write", filling)
    run = tmp_path / "tiny.toml"
    run.write_text(TINY.replace("[train]\nepochs = 1", "[train]\nepochs = 3"))
    code = main(
        ["train", "hinton", "--run", str(run), "--quiet", "--out", str(out),
         "--cache-dir", str(tmp_path / "c")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "KD505" in err and "disk is full" in err
    assert "last good checkpoint" in err and (out / "checkpoint.pt").is_file()


def test_output_folder_never_reuses_a_users_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "runs" / "hinton-seed0").mkdir(parents=True)
    (mine / "results.json").write_text("mine")
    (mine / "runs" / "hinton-seed0" / "notes").write_text("mine")
    logged: list[str] = []
    got = files.output_folder(mine, "compare", resumable="compare", log=logged.append)
    assert got.parent == mine and got.name.startswith("compare-") and str(got) in logged[0]
    assert (mine / "results.json").read_text() == "mine"
    # The folder kdspec made is continued by the same kind of command, and only by it.
    assert files.output_folder(got, "compare", resumable="compare", log=logged.append) == got
    (got / "results.json").write_text("{}")
    again = files.output_folder(got, "x", resumable="reproduce omitted-digit", log=logged.append)
    assert again.parent == got
    assert files.output_folder(got, "hinton", log=logged.append).parent == got  # train: never


def test_a_planted_output_mark_link_is_not_trusted(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (tmp_path / "elsewhere").write_text("compare\n")
    (mine / files.OUTPUT_MARK).symlink_to(tmp_path / "elsewhere")
    got = files.output_folder(mine, "compare", resumable="compare", log=lambda _: None)
    assert got != mine


def test_compare_into_a_folder_with_files_never_touches_them(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mine = tmp_path / "mine"
    (mine / "cells").mkdir(parents=True)
    (mine / "cells" / "hinton-seed0.json").write_text("my cell")
    (mine / "results.md").write_text("my results")
    run = tmp_path / "tiny.toml"
    run.write_text(TINY)
    argv = ["compare", "hinton", "--seeds", "1", "--run", str(run), "--quiet"]
    code = main([*argv, "--out", str(mine), "--cache-dir", str(tmp_path / "c")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (mine / "cells" / "hinton-seed0.json").read_text() == "my cell"
    assert (mine / "results.md").read_text() == "my results"
    (sub,) = [p for p in mine.iterdir() if p.name.startswith("compare-")]
    assert (sub / "results.json").is_file() and str(sub) in out.out + out.err
