"""``kdspec import torchdistill``: configs become specs that compute torchdistill's loss.

The equality tests build a torchdistill config around each golden's own constructor kwargs
(tests/reference/golden: torchdistill 1.1.5's loss classes on float64 tensors), import it, compile
the imported spec in functional mode on the golden's tensors and compare the total loss with
torchdistill's to 1e-6 relative. The sample tests import configs shaped like torchdistill's
published samples (tests/interop/torchdistill_configs, see its README) and check the spec and run
file that come out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

import torch  # noqa: E402
from tolerance import assert_close  # noqa: E402

from kdspec.api import load_method  # noqa: E402
from kdspec.cli.main import main  # noqa: E402
from kdspec.compiler import compile_spec  # noqa: E402
from kdspec.diagnostics import Severity  # noqa: E402
from kdspec.interop.torchdistill import convert  # noqa: E402
from kdspec.runtime import parse_run  # noqa: E402

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "reference" / "golden"
CONFIGS = HERE / "torchdistill_configs"


def config(sub_terms: dict[str, Any], stages: dict[str, Any] | None = None) -> str:
    train: dict[str, Any] = {"num_epochs": 10}
    if stages is None:
        train["criterion"] = {"key": "WeightedSumLoss", "kwargs": {"sub_terms": sub_terms}}
    else:
        train.update(stages)
    return yaml.safe_dump(
        {
            "models": {"teacher_model": {"key": "resnet56"}, "student_model": {"key": "resnet20"}},
            "train": train,
        }
    )


def term(key: str, kwargs: dict[str, Any], weight: float = 1.0, wrapper: Any = None) -> dict:
    out: dict[str, Any] = {"criterion": {"key": key, "kwargs": kwargs}, "weight": weight}
    if wrapper is not None:
        out["criterion_wrapper"] = wrapper
    return out


def imported_loss(text: str, g: dict[str, Any]) -> torch.Tensor:
    """The imported spec's total loss on the golden's tensors (taps named as in its io_layout)."""
    result = convert(text, "golden.yaml", method="golden")
    assert result.ok, [d.message for d in result.diagnostics]
    low = load_method("golden", text=result.spec)
    batch: dict[str, Any] = {}
    for role, prefix in (("teacher", "t"), ("student", "s")):
        for path, ios in g["io_layout"][role].items():
            for io, name in ios.items():
                tap = f"{prefix}.logits" if path == "." else f'{prefix}."{path}"'
                batch[tap + (".input" if io == "input" else "")] = g["inputs"][name]
    targets = g["io_layout"]["targets"]
    batch["labels"] = g["inputs"][targets] if targets else torch.zeros(8, dtype=torch.long)
    d = compile_spec(low, None, batch)
    return d(batch).loss


CASES = {
    "kd": lambda g: config({"kd": term("KDLoss", g["kwargs"])}),
    "at_code": lambda g: config({"at": term("ATLoss", g["kwargs"])}),
    "at_paper": lambda g: config({"at": term("ATLoss", g["kwargs"])}),
    "sp": lambda g: config({"sp": term("SPKDLoss", g["kwargs"])}),
    "rkd": lambda g: config({"rkd": term("RKDLoss", g["kwargs"])}),
    "rkd_dist": lambda g: config({"rkd": term("RKDLoss", g["kwargs"])}),
    "rkd_angle": lambda g: config({"rkd": term("RKDLoss", g["kwargs"])}),
    "pkt": lambda g: config({"pkt": term("PKTLoss", g["kwargs"])}),
    "fsp": lambda g: config({"fsp": term("FSPLoss", g["kwargs"])}),
    "dist": lambda g: config({"dist": term("DISTLoss", g["kwargs"])}),
    "dist_tau4": lambda g: config({"dist": term("DISTLoss", g["kwargs"])}),
    "fitnets": lambda g: config(
        {"hint": term("MSELoss", g["kwargs"], wrapper=g["criterion_wrapper"])}
    ),
    "fitnets_mean": lambda g: config(
        {"hint": term("MSELoss", g["kwargs"], wrapper=g["criterion_wrapper"])}
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_spec_computes_torchdistills_loss(case: str) -> None:
    g = torch.load(GOLDEN / f"{case}.pt", weights_only=True)
    loss = imported_loss(CASES[case](g), g)
    assert loss.dtype == torch.float64
    assert_close(loss.detach(), g["loss"].reshape(()), what=f"{case} loss")


def test_sub_term_weights_multiply_the_loss() -> None:
    g = torch.load(GOLDEN / "sp.pt", weights_only=True)
    loss = imported_loss(config({"sp": term("SPKDLoss", g["kwargs"], weight=3000.0)}), g)
    assert_close(loss.detach(), 3000 * g["loss"].reshape(()), what="weighted sp")


def test_kd_alpha_zero_is_the_bare_kl() -> None:
    g = torch.load(GOLDEN / "kd_alpha0.pt", weights_only=True)
    assert_close(
        imported_loss(config({"kd": term("KDLoss", g["kwargs"])}), g).detach(),
        g["loss"].reshape(()),
        what="kd alpha 0",
    )


# ------------------------------------------------------------------ published-sample configs


def run_import(tmp_path: Path, name: str, *extra: str) -> tuple[int, Path, Path]:
    code = main(
        [
            "import",
            "torchdistill",
            str(CONFIGS / f"{name}.yaml"),
            "--out-dir",
            str(tmp_path),
            *extra,
        ]
    )
    return code, tmp_path / f"{name}.kd", tmp_path / f"{name}.toml"


def test_sample_kd_cifar10(tmp_path: Path) -> None:
    code, spec, run = run_import(tmp_path, "cifar10_kd_wrn40_1_from_wrn40_4")
    assert code == 0
    text = spec.read_text()
    assert (
        "transfer kd: softmax(4) from t.logits to s.logits with kl weight (1 - 0.9) * 4^2" in text
    )
    assert "supervise kd_ce: s.logits with cross_entropy weight 0.9" in text
    cfg = parse_run(run.read_text(), str(run)).config
    assert cfg.models == {"t": "TODO:wide_resnet40_4", "s": "zoo:wrn_40_1"}  # no zoo WRN-40-4
    assert cfg.data.source == "torchvision:CIFAR10" and cfg.data.batch_size == 128
    tr = cfg.train
    assert (tr.epochs, tr.optimizer, tr.lr, tr.momentum, tr.weight_decay) == (
        200,
        "sgd",
        0.1,
        0.9,
        5e-4,
    )
    assert (tr.schedule, tr.milestones, tr.gamma) == ("step", [60, 120, 160], 0.2)


def test_sample_at_ilsvrc2012_keeps_module_paths(tmp_path: Path, capsys: Any) -> None:
    code, spec, _ = run_import(tmp_path, "ilsvrc2012_at_resnet18_from_resnet34")
    assert code == 0  # warnings only: the dataset is not CIFAR
    text = spec.read_text()
    assert (
        'transfer at_loss_pair1: attention(p=2) from t."layer3" to s."layer3" with mse weight 1000'
        in text
    )
    assert "supervise ce: s.logits with cross_entropy" in text
    assert "KD601" in capsys.readouterr().err


def test_sample_fitnet_two_stages(tmp_path: Path) -> None:
    code, spec, run = run_import(tmp_path, "ilsvrc2012_fitnet_resnet18_from_resnet152")
    assert code == 0
    low = load_method(spec)
    stages = low.method.effective_stages()
    assert [s.name for s in stages] == ["stage1", "stage2"]
    text = spec.read_text()
    assert 'from t."layer1" to regressor(s."layer1") with mse(reduction="sum")' in text
    assert 'train s."layer1", layer1' in text
    assert parse_run(run.read_text(), str(run)).config.train.epochs == 20


def test_sample_rkd_and_pkt(tmp_path: Path) -> None:
    assert run_import(tmp_path, "ilsvrc2012_rkd_resnet18_from_resnet34")[0] == 0
    text = (tmp_path / "ilsvrc2012_rkd_resnet18_from_resnet34.kd").read_text()
    assert 'flatten | angles from t."layer4" to s."layer4" with smooth_l1 weight 2' in text


def test_untranslatable_loss_is_an_error_at_its_yaml_line(tmp_path: Path, capsys: Any) -> None:
    code, spec, run = run_import(tmp_path, "ilsvrc2012_crd_resnet18_from_resnet50")
    err = capsys.readouterr().err
    assert code == 1 and not spec.exists() and not run.exists()
    assert "error[KD601]: `CRDLoss` (sub-term `crd`) is not translated" in err
    assert "ilsvrc2012_crd_resnet18_from_resnet50.yaml:" in err
    code, spec, _ = run_import(tmp_path, "ilsvrc2012_crd_resnet18_from_resnet50", "--partial")
    assert code == 1 and spec.exists()  # the translatable part, for editing by hand


def test_existing_files_are_kept(tmp_path: Path) -> None:
    (tmp_path / "cifar10_kd_wrn40_1_from_wrn40_4.kd").write_text("mine")
    code, spec, _ = run_import(tmp_path, "cifar10_kd_wrn40_1_from_wrn40_4")
    assert code == 2 and spec.read_text() == "mine"


def test_bad_yaml_and_non_configs() -> None:
    bad = convert("models: [unclosed\n", "bad.yaml")
    assert [d.code for d in bad.diagnostics] == ["KD602"] and not bad.ok
    other = convert("a: 1\n", "other.yaml")
    assert [d.code for d in other.diagnostics] == ["KD602"]


def test_tags_are_data_never_imported() -> None:
    text = (CONFIGS / "ilsvrc2012_at_resnet18_from_resnet34.yaml").read_text()
    assert "!import_call" in text
    result = convert(text, "at.yaml")
    assert result.ok and all(d.severity is Severity.WARNING for d in result.diagnostics)


def test_module_example_runs() -> None:
    import doctest

    import kdspec.interop.torchdistill as mod

    assert doctest.testmod(mod).failed == 0


@pytest.mark.parametrize(
    "text",
    [
        "models: " + "[" * 5000 + "]" * 5000,
        "train: " + "{a: " * 3000 + "1" + "}" * 3000,
        "models:\n" + "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n",
    ],
    ids=["flow lists", "flow maps", "block maps"],
)
def test_deep_yaml_is_kd602_not_a_recursion_error(text: str) -> None:
    from kdspec.interop.torchdistill import MAX_YAML_DEPTH, convert

    conv = convert(text, "deep.yaml")
    assert [d.code for d in conv.diagnostics] == ["KD602"]
    assert f"deeper than {MAX_YAML_DEPTH}" in conv.diagnostics[0].message
