"""Issue 13: `hf:` model folders never run code: pickled weights load only with weights_only,
`auto_map` remote code is refused, and each refusal is a diagnostic, not a crash."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from kdspec.diagnostics import KdError
from kdspec.runtime.models import build_model_from_source
from kdspec.runtime.runfile import default_run

transformers = pytest.importorskip("transformers")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _folder(tmp_path: Path) -> Path:
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    folder = tmp_path / "model"
    cfg.save_pretrained(folder)
    return folder


def _build(folder: Path) -> KdError:
    with pytest.raises(KdError) as exc:
        build_model_from_source("t", f"hf:{folder}", 3, 1, default_run())
    return exc.value


def test_a_malicious_pickle_is_refused_unexecuted(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    err = _build(folder)
    assert err.diagnostics[0].code == "KD405"
    assert not marker.exists()


def test_auto_map_remote_code_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w')\nclass Model: pass\n")
    err = _build(folder)
    assert err.diagnostics[0].code == "KD404" and "auto_map" in err.diagnostics[0].message
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["not json", "[1, 2]"])
def test_a_broken_config_is_kd404(tmp_path: Path, bad: str) -> None:
    folder = _folder(tmp_path)
    (folder / "config.json").write_text(bad)
    assert _build(folder).diagnostics[0].code == "KD404"


def test_a_text_model_on_image_data_is_kd403(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from kdspec.cli.main import main

    folder = _folder(tmp_path)
    run = tmp_path / "r.toml"
    run.write_text(
        f'[models]\nt = "hf:{folder}"\ns = "zoo:cnn_tiny"\n'
        '[data]\nsource = "synthetic"\nn = 64\nnum_classes = 4\ninput_shape = [1, 8, 8]\n'
        "[train]\nepochs = 1\n[teacher]\nepochs = 1\n"
    )
    code = main(["train", "hinton", "--run", str(run), "--quiet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "KD403" in err and "internal error" not in err
