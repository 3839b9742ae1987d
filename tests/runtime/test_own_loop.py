"""The README's own-loop example runs a spec exactly as `kdspec train` does (issue 16, item 3).

Same stage lengths (`for 30%`), same schedules at every step (a temperature ramp, an annealed
and a warmed-up weight), same batches: the loss terms agree step by step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from tolerance import assert_close

from kdspec.api import load_method
from kdspec.compiler import Progress, compile_spec
from kdspec.diagnostics import KdError
from kdspec.runtime.data import train_loader
from kdspec.runtime.job import JobOptions, compile_prepared, distill, prepare
from kdspec.runtime.runfile import parse_run
from kdspec.runtime.trainer import seed_everything
from kdspec.zoo import build_model

README = Path(__file__).resolve().parents[2] / "README.md"

SPEC = """method sched {
  param T = ramp(start=1, end=4)
  teacher t
  student s
  transfer hint: from t.stage[2] to regressor(s.stage[2]) with mse weight anneal(start=1, end=0.2)
  transfer kd: softmax(T) from t.logits to s.logits with kl weight 2 * warmup(epochs=1)
  supervise ce: s.logits with cross_entropy
  stage hints for 30% {
    train s.stage[..2], hint
    losses hint
  }
  stage distill {
    losses kd, ce
  }
}"""

RUN = """
[models]
t = "zoo:cnn_small"
s = "zoo:cnn_tiny"
[weights]
t = "t.pt"
[data]
source = "digits"
batch_size = 64
[train]
epochs = EPOCHS
lr = 0.05
momentum = 0.9
nesterov = false
weight_decay = 0
schedule = "none"
seed = 3
"""


def _readme_loop() -> tuple[str, int]:
    """The README's training loop (from `for stage in distiller.stages(`) and its epochs."""
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert code is not None
    loop = code.group(1)[code.group(1).index("for stage in distiller.stages(") :]
    epochs = re.search(r"distiller\.stages\(loader, epochs=(\d+)\)", loop)
    assert epochs is not None, "the README loop names its epochs"
    return loop, int(epochs.group(1))


class _Steps:
    def __init__(self) -> None:
        self.steps: list[tuple[str, dict[str, float]]] = []

    def on_step(self, stage: str, values: dict[str, float]) -> None:
        self.steps.append((stage, {k: v for k, v in values.items() if k != "loss"}))


def test_readme_loop_and_kdspec_train_give_the_same_terms_at_every_step(tmp_path: Path):
    loop, epochs = _readme_loop()
    torch.manual_seed(0)
    torch.save(build_model("cnn_small", 10, 1).state_dict(), tmp_path / "t.pt")
    run = parse_run(RUN.replace("EPOCHS", str(epochs)), "run.toml", base_dir=tmp_path)
    low = load_method("sched.kd", text=SPEC)

    # `kdspec train`: prepare the run, compile and train, recording every step's terms.
    trained = _Steps()
    opts = JobOptions(cache_dir=tmp_path / "cache", callbacks=[trained], log=lambda _: None)
    distill(prepare(low, run, opts), tmp_path / "out", opts=opts)

    # The README's loop on the same models, compiled the same way, over the same batches.
    prep = prepare(low, run, opts)
    distiller = compile_prepared(prep, opts)
    seed_everything(run.config.train.seed)
    loader = train_loader(prep.data.transfer, run.config.data.batch_size, run.config.train.seed)
    own: list[tuple[str, dict[str, float]]] = []
    forward = distiller.forward

    def recording(batch: Any, progress: Progress | None = None) -> Any:
        out = forward(batch, progress)
        own.append((distiller._stage.name, {k: float(v) for k, v in out.terms.items()}))
        return out

    distiller.forward = recording  # type: ignore[method-assign]
    exec(
        compile(loop, "README.md", "exec"),
        {"torch": torch, "distiller": distiller, "loader": loader},
    )

    steps_per_epoch = len(loader)
    hints = round(0.3 * epochs * steps_per_epoch)
    assert [s for s, _ in own] == ["hints"] * hints + ["distill"] * (
        epochs * steps_per_epoch - hints
    )
    assert [s for s, _ in own] == [s for s, _ in trained.steps]
    for k, ((_, mine), (_, theirs)) in enumerate(zip(own, trained.steps, strict=True)):
        assert mine.keys() == theirs.keys(), k
        for name in mine:
            assert_close(torch.tensor(mine[name]), torch.tensor(theirs[name]), what=f"{name}@{k}")
    # The schedules follow the steps: the kd weight warms up from 0 when its stage starts.
    kd = [v["kd"] for s, v in own if s == "distill"]
    assert kd[0] == 0.0 and kd[-1] > 0.0


RAMPED = """method m {
  teacher t
  student s
  transfer kd: softmax(T=ramp(start=1, end=4)) from t.logits to s.logits with kl
}"""


def _compiled(text: str):
    x = torch.randn(8, 1, 8, 8)
    models = {"t": build_model("mlp", 10, 1), "s": build_model("mlp", 10, 1)}
    return compile_spec(load_method("m.kd", text=text), models, (x, torch.arange(8) % 10)), x


def test_a_distiller_that_does_not_know_where_training_is_says_so():
    d, x = _compiled(RAMPED)
    with pytest.raises(KdError) as err:
        d((x, torch.arange(8) % 10))
    (diag,) = err.value.diagnostics
    assert diag.code == "KD504" and "`kd`" in diag.message
    assert "distiller.stages(" in (diag.help or "")
    out = d((x, torch.arange(8) % 10), progress=Progress.at(0, 10, 20))
    assert set(out.terms) == {"kd"}


def test_a_method_with_several_stages_and_none_set_says_so():
    text = RAMPED.replace("ramp(start=1, end=4)", "2").replace(
        "with kl\n",
        "with kl\n  supervise ce: s.logits with cross_entropy\n"
        "  stage a for 1 epochs { losses ce }\n  stage b { losses kd }\n",
    )
    d, x = _compiled(text)
    with pytest.raises(KdError) as err:
        d((x, torch.arange(8) % 10))
    assert err.value.diagnostics[0].code == "KD504"
    d.set_stage("b")  # the loop chose the stage itself: no schedule needs more
    assert set(d((x, torch.arange(8) % 10)).terms) == {"kd"}


def test_stages_yield_each_stage_its_share_of_batches_and_terms_are_detached():
    text = RAMPED.replace(
        "with kl\n",
        "with kl\n  supervise ce: s.logits with cross_entropy\n"
        "  stage a for 25% { losses ce }\n  stage b { losses kd }\n",
    )
    d, x = _compiled(text)
    data = [(x, torch.arange(8) % 10)] * 5
    seen = []
    for stage in d.stages(data, epochs=4):
        for batch in stage:
            out = d(batch)
            seen.append((stage.name, set(out.terms), d._last_progress))
            assert not any(v.requires_grad for v in out.terms.values())
            assert all(v.requires_grad for v in out.grad_terms.values())
    assert [s for s, _, _ in seen] == ["a"] * 5 + ["b"] * 15
    assert seen[5][2] == Progress.at(0, 5, 15) and seen[-1][2] == Progress.at(14, 5, 15)
