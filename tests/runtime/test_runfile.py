"""Run files (KD501), model sources (KD404/KD406/KD408) and checkpoints (KD405)."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
from tolerance import assert_close

from kdspec.diagnostics import KdError, render_many
from kdspec.runtime import default_run, load_run, parse_run
from kdspec.runtime.models import build_model_from_source, load_weights
from kdspec.zoo import build_model

RUN_FILES = sorted(glob.glob(str(Path(__file__).resolve().parents[2] / "runs" / "*.toml")))


def _errors(text: str, name: str = "run.toml") -> list:
    with pytest.raises(KdError) as info:
        parse_run(text, name)
    return info.value.diagnostics


def _line(diag) -> int:
    return diag.source.line_col(diag.span.start)[0]


def test_defaults_are_the_digits_job() -> None:
    cfg = default_run().config
    assert cfg.data.source == "digits"
    assert cfg.models == {}
    assert cfg.train.epochs >= 1


def test_valid_run_file_parses() -> None:
    run = parse_run(
        """
[models]
t = "zoo:resnet32x4"
s = "zoo:resnet8x4"

[train]
epochs = 240
schedule = "step"
milestones = [150, 180, 210]

[params]
T = 4
""",
        "ok.toml",
    )
    assert run.config.train.milestones == [150, 180, 210]
    assert run.config.params == {"T": 4}
    assert run.span("train", "milestones") is not None


def test_unknown_key_points_at_its_line_with_did_you_mean() -> None:
    text = '[data]\nsource = "digits"\n\n[train]\nepochs = 3\noptimzer = "sgd"\n'
    (diag,) = _errors(text)
    assert diag.code == "KD501"
    assert "`optimzer`" in diag.message
    assert _line(diag) == 6
    assert diag.help == "did you mean `optimizer`?"
    rendered = render_many([diag], "full", color=False)
    assert "run.toml:6:1" in rendered


def test_unknown_section_did_you_mean() -> None:
    (diag,) = _errors("[trian]\nepochs = 3\n")
    assert diag.code == "KD501"
    assert "section `trian`" in diag.message
    assert _line(diag) == 1
    assert diag.help == "did you mean `train`?"


def test_bad_value_points_at_the_key() -> None:
    (diag,) = _errors("[train]\nepochs = 3\nlr = -1\n")
    assert diag.code == "KD501"
    assert "train.lr" in diag.message
    assert _line(diag) == 3


def test_dotted_keys_are_located() -> None:
    (diag,) = _errors("train.epochs = 2\ntrain.bogus = 1\n")
    assert _line(diag) == 2


def test_toml_syntax_error_has_a_position() -> None:
    (diag,) = _errors("[train]\nepochs = = 3\n")
    assert diag.code == "KD501"
    assert "not valid TOML" in diag.message
    assert _line(diag) == 2


def test_every_error_is_reported() -> None:
    diags = _errors("[train]\nepocs = 3\nlr = 0\n[data]\nbatchsize = 4\n")
    assert [_line(d) for d in diags] == [2, 3, 5]


def test_unreadable_run_file(tmp_path: Path) -> None:
    with pytest.raises(KdError) as info:
        load_run(tmp_path / "missing.toml")
    assert info.value.diagnostics[0].code == "KD501"


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: Path(p).name)
def test_shipped_run_files_are_valid(path: str) -> None:
    run = load_run(path)
    assert run.config.models


# -- model sources ------------------------------------------------------------------------------


def _run_with(models: str, extra: str = "", top: str = "") -> object:
    return parse_run(f"{top}\n[models]\n{models}\n{extra}", "m.toml")


def test_zoo_model_builds() -> None:
    run = _run_with('s = "zoo:cnn_tiny"')
    model = build_model_from_source("s", "zoo:cnn_tiny", 10, 1, run)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_model_options_reach_the_architecture() -> None:
    run = _run_with('s = "zoo:mlp"', "[model_options]\ns = { hidden = [16] }\n")
    model = build_model_from_source("s", "zoo:mlp", 10, 1, run)
    assert model.kd_stages == ("hidden.relu1",)


def test_unknown_zoo_model_is_kd404_with_suggestion() -> None:
    run = _run_with('s = "zoo:resnet8x5"')
    with pytest.raises(KdError) as info:
        build_model_from_source("s", "zoo:resnet8x5", 10, 3, run)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD404"
    assert "`resnet8x4`" in (diag.help or "")
    assert _line(diag) == 3


def test_unknown_scheme_is_kd404() -> None:
    run = _run_with('s = "zooo:resnet8"')
    with pytest.raises(KdError) as info:
        build_model_from_source("s", "zooo:resnet8", 10, 3, run)
    assert info.value.diagnostics[0].code == "KD404"
    assert "zoo:resnet8" in (info.value.diagnostics[0].help or "")


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("torchvision") is not None,
    reason="torchvision is installed",
)
def test_missing_optional_package_says_how_to_install() -> None:
    run = _run_with('t = "torchvision:resnet18"')
    with pytest.raises(KdError) as info:
        build_model_from_source("t", "torchvision:resnet18", 10, 3, run)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD404"
    assert "pip install torchvision" in (diag.help or "")


def test_hf_source_must_be_local() -> None:
    run = _run_with('t = "hf:bert-base-uncased"')
    with pytest.raises(KdError) as info:
        build_model_from_source("t", "hf:bert-base-uncased", 2, 1, run)
    assert "never downloads" in (info.value.diagnostics[0].help or "")


def test_import_needs_permission(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KDSPEC_ALLOW_IMPORT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    source = "import:kdspec.zoo.small:cnn_tiny"
    run = _run_with(f's = "{source}"')
    with pytest.raises(KdError) as info:
        build_model_from_source("s", source, 10, 1, run)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD406"
    assert "--allow-import kdspec" in (diag.help or "")
    # Allowed from the command line; a prefix that is not a package boundary does not count.
    model = build_model_from_source("s", source, 10, 1, run, allow_import=["kdspec.zoo"])
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(KdError):
        build_model_from_source("s", source, 10, 1, run, allow_import=["kdsp"])


def test_import_of_a_missing_factory_is_kd404() -> None:
    run = _run_with('s = "import:kdspec.zoo.small:cnn_tiiny"')
    with pytest.raises(KdError) as info:
        build_model_from_source(
            "s", "import:kdspec.zoo.small:cnn_tiiny", 10, 1, run, allow_import=["kdspec"]
        )
    assert info.value.diagnostics[0].code == "KD404"
    assert "`cnn_tiny`" in (info.value.diagnostics[0].help or "")


# -- weights ------------------------------------------------------------------------------------


def _weights_run(tmp_path: Path, file: str) -> object:
    return parse_run(
        f'[models]\ns = "zoo:cnn_tiny"\n[weights]\ns = "{file}"\n',
        str(tmp_path / "w.toml"),
        base_dir=tmp_path,
    )


@pytest.mark.parametrize("wrap", ["plain", "model", "module_prefix"])
def test_good_checkpoint_loads(tmp_path: Path, wrap: str) -> None:
    src = build_model("cnn_tiny", 10, 1)
    state = src.state_dict()
    if wrap == "model":
        obj: object = {"model": state, "epoch": 240}
    elif wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    torch.save(obj, tmp_path / "s.pt")
    run = _weights_run(tmp_path, "s.pt")
    dst = build_model("cnn_tiny", 10, 1)
    load_weights(dst, "s", "s.pt", run)
    for k, v in dst.state_dict().items():
        assert_close(v, state[k])


def test_corrupt_checkpoint_is_kd405(tmp_path: Path) -> None:
    (tmp_path / "s.pt").write_bytes(b"not a checkpoint at all")
    run = _weights_run(tmp_path, "s.pt")
    with pytest.raises(KdError) as info:
        load_weights(build_model("cnn_tiny", 10, 1), "s", "s.pt", run)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD405"
    assert "s.pt" in diag.message
    assert _line(diag) == 4


def test_mismatched_checkpoint_names_the_keys(tmp_path: Path) -> None:
    torch.save(build_model("cnn_small", 10, 1).state_dict(), tmp_path / "s.pt")
    run = _weights_run(tmp_path, "s.pt")
    with pytest.raises(KdError) as info:
        load_weights(build_model("cnn_tiny", 10, 1), "s", "s.pt", run)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD405"
    text = " ".join(diag.notes)
    assert "unexpected keys" in text
    assert "`stage1.conv2.weight`" in text
    assert "shape mismatches" in text


def test_missing_checkpoint_is_kd405(tmp_path: Path) -> None:
    run = _weights_run(tmp_path, "nope.pt")
    with pytest.raises(KdError) as info:
        load_weights(build_model("cnn_tiny", 10, 1), "s", "nope.pt", run)
    assert info.value.diagnostics[0].code == "KD405"
