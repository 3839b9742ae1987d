"""Every tap is resolved on the untrained models before any teacher is pre-trained (issue 16).

A wrong `stage[7]` or module path is KD402/KD401 in seconds, not after a teacher's training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kdspec.api import load_method
from kdspec.diagnostics import KdError
from kdspec.runtime import job
from kdspec.runtime.runfile import parse_run

RUN = """
[models]
t = "zoo:cnn_small"
s = "zoo:cnn_tiny"
[data]
source = "digits"
"""

SPEC = """method m {
  teacher t
  student s
  transfer hint: from TAP to regressor(s.stage[1]) with mse
  supervise ce: s.logits with cross_entropy
}"""


@pytest.mark.parametrize(("tap", "code"), [("t.stage[7]", "KD402"), ('t."features.nope"', "KD401")])
def test_a_bad_tap_is_reported_before_the_teacher_is_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tap: str, code: str
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher was pre-trained before its taps were checked")

    monkeypatch.setattr(job, "get_teacher", no_training)
    run = parse_run(RUN, "run.toml", base_dir=tmp_path)
    low = load_method("m.kd", text=SPEC.replace("TAP", tap))
    with pytest.raises(KdError) as err:
        job.prepare(low, run, job.JobOptions(cache_dir=tmp_path / "cache", log=lambda _: None))
    codes = [d.code for d in err.value.diagnostics]
    assert code in codes, codes
    assert any("hint" in d.message or tap.split(".")[0] in d.message for d in err.value.diagnostics)
