"""The torchdistill goldens load safely and are internally consistent (no torchdistill needed).

Goldens are produced by ``tests/reference/make_torchdistill_goldens.py`` in the separate
``.venv-ref`` environment; see ``tests/reference/README.md``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MANIFEST = json.loads((GOLDEN_DIR / "MANIFEST.json").read_text())
ENTRIES = {c["case"]: c for c in MANIFEST["cases"]}
FILES = sorted(p.name for p in GOLDEN_DIR.glob("*.pt"))
REQUIRED_KEYS = {
    "case",
    "torchdistill_class",
    "kwargs",
    "criterion_wrapper",
    "io_layout",
    "inputs",
    "loss",
    "loss_shape_raw",
    "grads",
    "state",
    "float32_internal",
    "notes",
}
# cases the parity suite relies on
EXPECTED_CASES = {
    "kd",
    "kd_soft_only",
    "kd_alpha0",
    "fitnets",
    "fitnets_mean",
    "at_paper",
    "at_code",
    "fsp",
    "sp",
    "rkd",
    "rkd_dist",
    "rkd_angle",
    "pkt",
    "vid",
    "ab",
    "ab_sum",
    "ft_p2",
    "kd_no_targets",
    "crd_step2",
    "hcl_small",
    "ft",
    "crd",
    "dist",
    "dist_tau4",
    "hcl",
}


def load(case: str) -> dict:
    return torch.load(GOLDEN_DIR / ENTRIES[case]["file"], weights_only=True)


def layout_names(layout: object) -> set[str]:
    if isinstance(layout, str):
        return {layout}
    if isinstance(layout, list | tuple):
        return set().union(*(layout_names(v) for v in layout))
    if isinstance(layout, dict):
        return set().union(set(), *(layout_names(v) for v in layout.values()))
    raise TypeError(layout)


def test_manifest_lists_every_file_and_nothing_else() -> None:
    assert sorted(c["file"] for c in MANIFEST["cases"]) == FILES
    assert len(ENTRIES) == len(MANIFEST["cases"])
    assert MANIFEST["torchdistill_version"] == "1.1.5"
    assert MANIFEST["torch_version"].startswith("2.")
    assert MANIFEST["total_bytes"] == sum(c["size_bytes"] for c in MANIFEST["cases"])


def test_expected_cases_present() -> None:
    assert set(ENTRIES) >= EXPECTED_CASES


@pytest.mark.parametrize("case", sorted(ENTRIES))
def test_golden_wellformed(case: str) -> None:
    entry = ENTRIES[case]
    path = GOLDEN_DIR / entry["file"]
    raw = path.read_bytes()
    assert len(raw) == entry["size_bytes"] < 200 * 1024
    assert hashlib.sha256(raw).hexdigest() == entry["sha256"]

    g = load(case)
    assert set(g) >= REQUIRED_KEYS
    assert g["case"] == case == path.stem
    assert g["torchdistill_class"] == entry["torchdistill_class"]
    assert g["kwargs"] == entry["kwargs"]
    assert g["criterion_wrapper"] == entry["criterion_wrapper"]
    assert isinstance(g["notes"], str) and g["notes"]

    loss = g["loss"]
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert float(loss) == pytest.approx(entry["loss"], rel=1e-12)

    inputs = g["inputs"]
    assert {n: list(t.shape) for n, t in inputs.items()} == entry["input_shapes"]
    for t in inputs.values():
        assert t.dtype in (torch.float64, torch.int64)
        if t.is_floating_point():
            assert torch.isfinite(t).all()

    grads = g["grads"]
    assert grads, "every case has at least one student input with a gradient"
    assert sorted(grads) == entry["grad_names"]
    for name, grad in grads.items():
        assert name in inputs
        assert grad.shape == inputs[name].shape
        assert grad.dtype == torch.float64
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0

    # every tensor referenced by the io layout exists and every input is referenced
    layout = g["io_layout"]
    referenced = layout_names(layout["student"]) | layout_names(layout["teacher"])
    if layout["targets"] is not None:
        referenced.add(layout["targets"])
    assert referenced == set(inputs)

    assert {n: list(t.shape) for n, t in g["state"].items()} == entry["state_shapes"]
    for t in g["state"].values():
        assert torch.isfinite(t).all()


def test_crd_steps_chain() -> None:
    s1, s2 = load("crd"), load("crd_step2")
    for k in ("memory_v1", "memory_v2", "params"):
        assert torch.equal(s1["state"][f"{k}_after"], s2["state"][f"{k}_init"])
    # Z constants unset before step 1, set after it
    assert (s1["state"]["params_init"][2:4] == -1).all()
    assert (s1["state"]["params_after"][2:4] > 0).all()
    kw = s1["kwargs"]
    contrast = s1["inputs"]["contrast_idx"]
    assert contrast.shape[1] == kw["num_negative_samples"] + 1
    assert torch.equal(contrast[:, 0], s1["inputs"]["pos_idx"])
    assert int(contrast.max()) < kw["output_size"]
