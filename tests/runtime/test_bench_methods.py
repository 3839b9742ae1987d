"""kdspec.bench.methods runs end to end (one round, tiny models): no timing is asserted."""

from __future__ import annotations

import pytest

import kdspec.bench.methods


def _load():
    return kdspec.bench.methods


def test_bench_checks_first_step_losses_and_prints_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = _load()
    tiny = "--teacher resnet8 --student resnet8 --batch 8 --rounds 1 --steps 1"
    assert bench.main([*tiny.split(), "--num-samples", "100", "--nce-k", "8"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "torch" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    assert set(rows) == set(bench.METHODS)
    assert all(float(r[1]) > 0 for r in rows.values())


def test_bench_refuses_when_the_hand_loop_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load()
    monkeypatch.setattr(bench, "kd", lambda zs, zt, T: zs.sum() * 0 + 1.0)
    with pytest.raises(SystemExit, match="first-step losses differ"):
        bench.bench(
            "hinton", teacher="resnet8", student="resnet8", batch=4, rounds=1, steps=1,
            num_samples=50, k=4,
        )  # fmt: skip
