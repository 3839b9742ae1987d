"""``kdspec export``: the standalone script computes what the compiled Distiller computes.

For each method, the exported script's ``Method`` and the compiled ``Distiller`` start from the
same models (and the same adapter weights), take the same batches through every stage with
the same SGD optimizer, and must give equal losses at every step and equal student weights at
the end (1e-6). Digits default pair (cnn_small -> cnn_tiny) and a CIFAR zoo pair on random
tensors (resnet14 -> resnet8).
"""

from __future__ import annotations

import copy
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tolerance import assert_close

from kdspec.api import load_method
from kdspec.cli.main import main
from kdspec.compiler import compile_spec
from kdspec.compiler.eject import EjectError, eject, iter_adapters
from kdspec.data import digits_splits
from kdspec.zoo import build_model

# Library methods the exporter writes out (the rest: see UNSUPPORTED and docs/ecosystem.md).
DIGITS = ["ab", "at", "dist", "fitnets", "hinton", "nst", "pkt", "rkd", "sp", "tfkd_self", "vid"]
# Methods written with primitives and `def`s (their own, the prelude's), `let` and per-sample
# weights: the script calls the primitives with the axes the compiler inferred.
EXPRESSIONS = ["byot", "jsd", "mlkd", "nkd", "reverse_kl", "skew_kl", "ttm", "tvd", "wsl"]
CIFAR = ["hinton", "fitnets", "at", "rkd"]
UNSUPPORTED = {
    "dkd": "scheduled weight",
    "ft": "on a list",
    "one": "on a list",
    "ctkd": "learned tensor",
    "semckd": "learned loss",
    "tfkd_reg": "virtual role",
    "mgd": "on a list",
}


def equal_runs(spec, teacher, student, batches, sources, tmp_path, steps=3, text=None) -> None:
    x, y = batches[0]
    d = compile_spec(load_method(spec, text=text), {"t": teacher, "s": student}, (x, y))
    models = {k: copy.deepcopy(m) for k, m in d.roles.items()}
    text = eject(d, (x, y), sources=sources)
    assert not re.search(r"^\s*(import|from)\s+kdspec", text, re.M)
    path = tmp_path / f"{spec}_train.py"
    path.write_text(text)
    method = runpy.run_path(str(path), run_name="exported")["Method"](models)
    for a, b in zip(iter_adapters(d), method.adapters, strict=True):
        b.load_state_dict(a.state_dict())  # same adapter init (both were drawn at random)
    for plan in d.stage_plans:
        d.set_stage(plan.name)
        params = method.set_stage(plan.name)
        ours = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
        theirs = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        assert len(params) == len(ours.param_groups[0]["params"])
        for bx, by in batches[:steps]:
            out = d((bx, by))
            loss, terms = method(bx, by)
            assert_close(loss.detach(), out.loss.detach(), rtol=1e-6, what=f"{spec} {plan.name}")
            assert set(terms) == set(out.terms)
            ours.zero_grad()
            out.loss.backward()
            ours.step()
            theirs.zero_grad()
            loss.backward()
            theirs.step()
    for (name, a), b in zip(
        d.roles["s"].state_dict().items(), method.roles["s"].state_dict().values(), strict=True
    ):
        assert_close(b.double(), a.double(), rtol=1e-6, what=f"{spec} student {name}")


@pytest.fixture(scope="module")
def digits_batches():
    splits = digits_splits(seed=0)
    xs = torch.stack([splits.train[i][0] for i in range(48)])
    ys = torch.tensor([int(splits.train[i][1]) for i in range(48)])
    return [(xs[i : i + 16], ys[i : i + 16]) for i in range(0, 48, 16)]


@pytest.mark.parametrize("spec", DIGITS + EXPRESSIONS)
def test_exported_script_equals_distiller_on_digits(spec, digits_batches, tmp_path) -> None:
    torch.manual_seed(0)
    t, s = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)
    sources = {"t": "zoo:cnn_small", "s": "zoo:cnn_tiny"}
    equal_runs(spec, t, s, digits_batches, sources, tmp_path)


# Every prelude function of the vocabulary the digits pair can take, a spec's own `def`
# transform and loss, a pipeline of both, and a weight computed from the batch.
PRELUDE_MIX = """
def centred(x) = x - mean(x, over=class)
def sq_rows(t, s) = sum((s - t) ^ 2, over=sample)

method prelude_mix {
  param T = 4
  teacher t
  student s
  transfer at: attention(p=2) from t.stage[..] to resize(s.stage[..]) map last with mse weight 10
  transfer sp: similarity from t.stage[-1] to s.stage[-1] with frobenius
  transfer g: gram | normalize from t.stage[-1] to conv1x1(s.stage[-1]) with mse
  transfer cd: channel_dist from t.stage[-1] to conv1x1(s.stage[-1]) with mse
  transfer ab: binarize from t.stage[-1] to conv1x1(s.stage[-1]) with partial_l2 weight 0.01
  transfer pkt: pkt_affinity from t.embedding to s.embedding with kl
  transfer z: zscore | centred
      from t.logits
      to s.logits
      with sq_rows
      weight (1 - stopgrad(at_label(softmax(t.logits)))) / B
  transfer nt: non_target(T) from t.logits to s.logits with kl weight T^2
  supervise ce: s.logits with cross_entropy
}
"""


def test_prelude_functions_and_defs_export(digits_batches, tmp_path) -> None:
    from kdspec.vocabulary import FUNCTIONS, PRELUDE_IMPL

    prelude = {n for n, f in FUNCTIONS.items() if f.impl.startswith(PRELUDE_IMPL)}
    written = set(re.findall(r"\b([a-z_0-9]+)\b", PRELUDE_MIX)) & prelude
    assert len(written) >= 9  # the script computes them from the primitives
    torch.manual_seed(0)
    t, s = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)
    sources = {"t": "zoo:cnn_small", "s": "zoo:cnn_tiny"}
    equal_runs("prelude_mix", t, s, digits_batches, sources, tmp_path, text=PRELUDE_MIX)


@pytest.mark.parametrize("spec", CIFAR)
def test_exported_script_equals_distiller_on_a_cifar_pair(spec, tmp_path) -> None:
    torch.manual_seed(0)
    t, s = build_model("resnet14", 100, 3), build_model("resnet8", 100, 3)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 100, (8,), generator=g))
        for _ in range(2)
    ]
    equal_runs(spec, t, s, batches, {"t": "zoo:resnet14", "s": "zoo:resnet8"}, tmp_path, 2)


@pytest.mark.parametrize(("spec", "why"), sorted(UNSUPPORTED.items()))
def test_unsupported_constructs_are_named(spec, why, digits_batches) -> None:
    torch.manual_seed(0)
    t, s = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)
    x, y = digits_batches[0]
    d = compile_spec(load_method(spec), {"t": t, "s": s}, (x, y))
    with pytest.raises(EjectError) as exc:
        eject(d, (x, y))
    assert any(why in r for r in exc.value.reasons)


def test_cli_writes_a_script_that_trains_alone(tmp_path, capsys) -> None:
    out = tmp_path / "hinton_train.py"
    assert main(["export", "hinton", "-o", str(out)]) == 0
    assert main(["export", "hinton", "-o", str(out)]) == 2  # never overwrites without --force
    proc = subprocess.run(
        [sys.executable, "-I", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )  # -I: isolated, so kdspec is not importable from the source tree or the venv's .pth
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distill: step" in proc.stdout or "step" in proc.stdout
    assert (tmp_path / "student.pt").is_file()
    assert main(["export", "dkd", "-o", str(tmp_path / "dkd.py")]) == 1
    assert "error[KD603]" in capsys.readouterr().err


def test_script_is_plain_pytorch(tmp_path) -> None:
    out = tmp_path / "f.py"
    assert main(["export", "fitnets", "-o", str(out)]) == 0
    text = out.read_text()
    compile(text, str(out), "exec")
    assert "def term_hint(self, taps, y):" in text and "class Method(nn.Module):" in text
    assert "STAGES = [('hints'," in text
    assert Path(out).stat().st_size < 200_000


@pytest.mark.parametrize("spec", ["fitnets", "hinton", "at"])
@pytest.mark.parametrize(("epochs", "steps_per_epoch"), [(20, 7), (3, 10), (240, 782)])
def test_script_plans_stages_as_kdspec_train(spec, epochs, steps_per_epoch, digits_batches,
                                             tmp_path) -> None:  # fmt: skip
    from kdspec.runtime.trainer import plan_stages

    torch.manual_seed(0)
    t, s = build_model("cnn_small", 10, 1), build_model("cnn_tiny", 10, 1)
    x, y = digits_batches[0]
    d = compile_spec(load_method(spec), {"t": t, "s": s}, (x, y))
    path = tmp_path / "script.py"
    path.write_text(eject(d, (x, y), sources={"t": "zoo:cnn_small", "s": "zoo:cnn_tiny"}))
    scope = runpy.run_path(str(path), run_name="exported")
    ours = [(r.name, r.steps) for r in plan_stages(d.stage_plans, epochs, steps_per_epoch)]
    assert scope["plan"](scope["Method"].STAGES, epochs, steps_per_epoch) == ours
