"""Issue 13: absurd sizes and budgets are diagnostics before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdspec.cli.main import main

TINY = """
[data]
source = "synthetic"
n = 64
num_classes = 4
input_shape = [1, 8, 8]
batch_size = 16
{data}

[train]
epochs = 1
{train}

[teacher]
epochs = 1
{teacher}
{extra}
"""


def _train(capsys, tmp_path: Path, spec: str = "hinton", *argv: str, **parts: str):  # type: ignore[no-untyped-def]
    run = tmp_path / "r.toml"
    fields = {"data": "", "train": "", "teacher": "", "extra": ""} | parts
    run.write_text(TINY.format(**fields))
    code = main(
        ["train", spec, "--run", str(run), "--quiet", "--out", str(tmp_path / "o"),
         "--cache-dir", str(tmp_path / "c"), *argv]
    )  # fmt: skip
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(
    "part",
    [
        {"data": "n = 1000000000"},
        {"data": "num_classes = 1000000000"},
        {"data": "input_shape = [3, 100000, 100000]"},
        {"data": "n = 1000000\ninput_shape = [3, 256, 256]"},
        {"data": "batch_size = 1000000000"},
        {"train": "epochs = 1000000000"},
        {"teacher": "epochs = 1000000000"},
    ],
)
def test_absurd_run_file_sizes_are_kd501(capsys, tmp_path: Path, part: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    if "epochs" in next(iter(part.values())):
        text = next(iter(part.values()))
        key = next(iter(part))
        part = {key: ""}
        body = TINY.format(data="", train="", teacher="", extra="")
        body = (
            body.replace("[train]\nepochs = 1", "[train]\n" + text)
            if key == "train"
            else (body.replace("[teacher]\nepochs = 1", "[teacher]\n" + text))
        )
        run = tmp_path / "r.toml"
        run.write_text(body)
        code = main(["train", "hinton", "--run", str(run), "--quiet", "--out", str(tmp_path / "o")])
        out = capsys.readouterr().err
    else:
        code, out = _train(capsys, tmp_path, **part)
    assert code == 1 and "KD501" in out and "internal error" not in out
    assert not (tmp_path / "o").exists()


def test_absurd_epochs_on_the_command_line_are_a_usage_error(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = _train(capsys, tmp_path, "hinton", "--epochs", "1000000000")
    assert code == 2 and "--epochs" in out


def test_an_absurd_model_is_kd404_before_memory_is_used(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = _train(
        capsys,
        tmp_path,
        extra='[models]\nt = "zoo:cnn_tiny"\ns = "zoo:mlp"\n'
        "[model_options]\ns = { hidden = [1000000, 1000000] }",
    )
    assert code == 1 and "KD404" in out and "parameters" in out


def test_more_repeats_than_steps_is_kd207(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "rep.kd"
    spec.write_text(
        "method rep {\n  teacher t\n  student s\n"
        "  transfer kd: softmax(T=4) from t.logits to s.logits with kl\n"
        "  supervise ce: s.logits with cross_entropy\n"
        "  stage a repeat 40 { train s }\n}\n"
    )
    code, out = _train(capsys, tmp_path, str(spec))
    assert code == 1 and "KD207" in out and "repeats 40 times" in out


def test_a_huge_number_of_branches_is_refused(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for m in ("100001", "100001000"):
        code = main(["check", "--param", f"m={m}", str(Path("specs/one.kd"))])
        out = capsys.readouterr()
        assert code == 1 and "KD205" in out.err


def test_posint_sizes_have_an_upper_bound() -> None:
    from kdspec.api import check_source
    from kdspec.source import SourceFile

    text = (
        "method m {\n  teacher t\n  student s\n"
        "  transfer from t.logits to s.logits with crd_nce(k=100000000000)\n}\n"
    )
    _, diags = check_source(SourceFile("x.kd", text))
    assert any(d.code == "KD205" and "at most" in d.message for d in diags), diags


def test_excluding_every_class_is_kd501(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = _train(capsys, tmp_path, data="exclude_classes = [0, 1, 2, 3]")
    assert code == 1 and "KD501" in out and "every class" in out


def test_batch_norm_with_batches_of_one_is_kd501(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "r.toml"
    run.write_text(TINY.format(data="", train="", teacher="", extra="").replace("= 16", "= 1"))
    code = main(["train", "hinton", "--run", str(run), "--quiet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "KD501" in err and "batch norm" in err


def test_a_last_batch_of_one_example_is_dropped() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from kdspec.runtime.data import train_loader

    ds = TensorDataset(torch.zeros(33, 2), torch.zeros(33, dtype=torch.long))
    sizes = [len(b[0]) for b in train_loader(ds, 16, 0)]
    assert sizes == [16, 16]
    assert [len(b[0]) for b in train_loader(TensorDataset(torch.zeros(34, 2)), 16, 0)] == [
        16,
        16,
        2,
    ]


def test_a_lazy_model_is_sized_before_training(capsys, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "lazymod.py").write_text(
        "import torch\n"
        "def make(num_classes, in_channels):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = _train(
        capsys,
        tmp_path,
        "hinton",
        "--allow-import",
        "lazymod",
        extra='[models]\nt = "zoo:cnn_tiny"\ns = "import:lazymod:make"',
    )
    assert code == 0, out
