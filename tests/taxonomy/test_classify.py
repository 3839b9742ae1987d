"""Classification from the method graph: pinned labels, evidence, and invariance to names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from taxonomy_cases import (
    SKETCHES,
    classify_text,
    library_names,
    library_text,
    lower_text,
    rename_and_reorder,
)

from kdspec.api import check_source
from kdspec.cli.main import main
from kdspec.source import SourceFile
from kdspec.taxonomy.classify import DIMENSIONS
from kdspec.vocabulary import CLAIM_DIMENSIONS


@dataclass(frozen=True)
class Expected:
    scheme: tuple[str, ...]
    knowledge: tuple[str, ...]
    topology: str
    stages: str
    why: str


EXPECTED: dict[str, Expected] = {
    "hinton": Expected(
        ("offline",),
        ("response",),
        "single_teacher",
        "single",
        "a frozen teacher's softened logits matched at the student's logits",
    ),
    "fitnets": Expected(
        ("offline",),
        ("response", "feature"),
        "single_teacher",
        "multi",
        "the hint regresses an intermediate stage (feature), then KD on the logits (response); "
        "two student stages, but the teacher is frozen in both, so still offline",
    ),
    "at": Expected(
        ("offline",),
        ("feature",),
        "single_teacher",
        "single",
        "attention maps of intermediate stages, matched element-wise (Gou: FeaK)",
    ),
    "rkd": Expected(
        ("offline",),
        ("relation",),
        "single_teacher",
        "single",
        "distances and angles between the samples of a batch, read at the embedding: the "
        "knowledge is the relation, not the feature or the logits (the surveys also say "
        "'RelK, FeaK' and 'logits')",
    ),
    "dml": Expected(
        ("online",),
        ("response",),
        "mutual",
        "single",
        "two peers trained in the same stage teach each other: the teacher is updated together "
        "with the student",
    ),
    "byot": Expected(
        ("self",),
        ("response", "feature"),
        "self",
        "single",
        "the network's deepest classifier teaches its exits (response) and its deepest stage "
        "teaches the shallower ones (feature): both edges go from `s` to `s`",
    ),
    "takd": Expected(
        ("offline",),
        ("response",),
        "chain",
        "multi",
        "teacher -> assistant -> student; the assistant is trained in an earlier stage only and "
        "frozen when it teaches, so every hop is offline",
    ),
    "multi_teacher": Expected(
        ("offline",),
        ("response",),
        "multi_teacher",
        "single",
        "three frozen teachers averaged by an ensemble teach one student",
    ),
    "mean_teacher": Expected(
        ("self",),
        ("response",),
        "self",
        "single",
        "the teacher is an exponential moving average of the student itself",
    ),
    "sp": Expected(
        ("offline",),
        ("relation",),
        "single_teacher",
        "single",
        "the batch similarity matrix relates samples to each other",
    ),
    "pkt": Expected(
        ("offline",),
        ("relation",),
        "single_teacher",
        "single",
        "affinities between samples as probabilities: relation (Gou Table 2), even though "
        "they are read at a feature layer",
    ),
    "crd": Expected(
        ("offline",),
        ("relation",),
        "single_teacher",
        "single",
        "contrastive matching scores each sample against the other samples of the batch: "
        "relation (contrastive), not response (Gou Table 4)",
    ),
    "ban": Expected(
        ("offline", "self"),
        ("response",),
        "self",
        "multi",
        "BAN: each generation's teacher is frozen when the student trains -> offline; same "
        "architecture across generations via handoff -> self (generations)",
    ),
    "dkd": Expected(
        ("offline",),
        ("response",),
        "single_teacher",
        "single",
        "target and non-target parts of the logits: still read at the output layer",
    ),
    "nst": Expected(
        ("offline",),
        ("feature",),
        "single_teacher",
        "single",
        "each channel's spatial distribution of one sample: read at intermediate stages, no "
        "relation between samples -> feature (Gou), not logits",
    ),
    "fsp": Expected(
        ("offline",),
        ("relation",),
        "single_teacher",
        "multi",
        "the FSP matrix relates two layers to each other",
    ),
    "cskd": Expected(
        ("self",),
        ("response",),
        "self",
        "single",
        "the network teaches itself on another sample of the same class",
    ),
    "tfkd_reg": Expected(
        ("self",),
        ("response",),
        "self",
        "single",
        "a virtual teacher (no network): teacher-free, self-distillation",
    ),
    "dist": Expected(
        ("offline",),
        ("response", "relation"),
        "single_teacher",
        "single",
        "Pearson over classes per sample reads only predictions (response); Pearson over the "
        "batch per class relates samples (relation)",
    ),
    "online": Expected(
        ("online",),
        ("response",),
        "single_teacher",
        "single",
        "the teacher is trained in the same stage as the student",
    ),
}


def _cases() -> list[object]:
    cases = []
    for name in library_names():
        if name in EXPECTED:
            cases.append(pytest.param(name, library_text(name), id=f"library/{name}"))
    for name, text in SKETCHES.items():
        cases.append(pytest.param(name, text, id=f"sketch/{name}"))
    return cases


@pytest.mark.parametrize(("name", "text"), _cases())
def test_pinned_labels(name: str, text: str) -> None:
    expected = EXPECTED[name]
    c = classify_text(text, name=f"{name}.kd")
    got = (c.scheme, c.knowledge, c.topology, c.stages)
    assert got == (expected.scheme, expected.knowledge, expected.topology, expected.stages), (
        expected.why
    )


@pytest.mark.parametrize("name", library_names())
def test_every_library_spec_classifies(name: str) -> None:
    """Specs without pinned labels (added since) still get a value for every dimension."""
    c = classify_text(library_text(name), name=f"{name}.kd")
    assert [f.dimension for f in c.findings] == list(DIMENSIONS)
    for dim, values in CLAIM_DIMENSIONS.items():
        assert set(c.claim_values(dim)) <= {*values, "none"}, dim
    for f in c.findings:
        assert f.value, f.dimension
        assert f.evidence, f"{f.dimension} has no evidence"
    json.dumps(c.to_dict())


def test_ban_evidence_explains_the_survey_disagreement() -> None:
    c = classify_text(SKETCHES["ban"])
    texts = " ".join(e.text for e in c["scheme"].evidence)
    assert "handoff s -> t" in texts
    assert "Gou" in texts
    assert c["teacher_state"].labels == ("previous_generation",)
    assert c["stages"].value.endswith("(4 runs)")  # generation 0, then 3 generations


def test_teacher_state() -> None:
    """Frozen, trained earlier, co-trained, moving average and virtual are told apart."""
    assert classify_text(library_text("hinton"))["teacher_state"].labels == ("pretrained_frozen",)
    # TAKD: the assistant teaches the student after its own stage, frozen.
    assert classify_text(library_text("takd"))["teacher_state"].labels == (
        "pretrained_frozen",
        "trained_earlier",
    )
    assert classify_text(library_text("dml"))["teacher_state"].labels == ("co_trained",)
    assert classify_text(library_text("mean_teacher"))["teacher_state"].labels == (
        "moving_average",
    )
    assert classify_text(SKETCHES["tfkd_reg"])["teacher_state"].labels == ("virtual",)


def test_self_edge_kinds() -> None:
    """BYOT's exits and deeper layers, CS-KD's paired samples, Mean Teacher's average."""
    assert "self: deeper layers, exits" in classify_text(library_text("byot"))["roles"].value
    assert "self: paired samples" in classify_text(SKETCHES["cskd"])["roles"].value
    assert "self: moving average" in classify_text(library_text("mean_teacher"))["roles"].value


def test_takd_chain_evidence() -> None:
    c = classify_text(library_text("takd"))
    assert "chain of 2 hops" in c["roles"].value
    assert any("`t` -> `ta` -> `s`" in e.text for e in c["roles"].evidence)


def test_multi_teacher_combination() -> None:
    c = classify_text(library_text("multi_teacher"))
    assert "3 teachers" in c["roles"].value
    assert "ensemble (mean of 3)" in c["roles"].value


def test_taps_mapping_and_adapters() -> None:
    at = classify_text(library_text("at"))
    assert at["taps"].value == "stage[..] -> stage[..]"
    assert at["mapping"].value == "last-k"  # `map last`
    fitnets = classify_text(library_text("fitnets"))
    assert fitnets["adapters"].value == "regressor (conv, student side, trained)"
    assert "stage[2] -> stage[2]" in fitnets["taps"].value
    byot = classify_text(library_text("byot"))
    assert byot["mapping"].value == "cross-stage"  # deepest stage -> every shallower stage
    assert "exits on stage[..-2]" in byot["taps"].value
    crd = classify_text(SKETCHES["crd"])
    assert crd["adapters"].value == "embed (linear, teacher side, student side, trained)"
    assert classify_text(library_text("hinton"))["adapters"].value == "none"


def test_weights_t_squared_and_warmup() -> None:
    """T^2 when the weight multiplies the softmax temperature squared; warm-up schedules."""
    assert classify_text(library_text("hinton"))["weights"].value == "T^2 scaling"
    assert classify_text(library_text("rkd"))["weights"].value == "constant"
    assert classify_text(library_text("mean_teacher"))["weights"].value == "warm-up"
    assert classify_text(SKETCHES["dkd"])["weights"].value == "T^2 scaling, warm-up"
    # A literal temperature squared counts too (as after `use`, which inlines parameters).
    text = (
        library_text("hinton")
        .replace("alpha * T^2", "0.9 * 4^2")
        .replace("softmax(T)", "softmax(4)")
    )
    assert classify_text(text)["weights"].value == "T^2 scaling"
    # A square of something else is no temperature scaling.
    text = library_text("hinton").replace("alpha * T^2", "alpha^2")
    assert classify_text(text)["weights"].value == "constant"


def test_stages_are_not_the_scheme() -> None:
    """FitNets has two student stages and an offline teacher: the dimensions stay apart."""
    c = classify_text(library_text("fitnets"))
    assert c.stages == "multi"
    assert c.scheme == ("offline",)
    assert c["stages"].value.startswith(
        "2: feature / trains student+adapters (regressor) (partly) -> response"
    )


def test_data_dimension() -> None:
    assert classify_text(library_text("hinton"))["data"].value == "same data"
    mt = classify_text(library_text("mean_teacher"))["data"]
    assert mt.value == (
        "modification: noise (gaussian_noise); partitioning: subset (fraction) per term"
    )
    texts = [e.text for e in mt.evidence]
    assert any(t.startswith("modification: view ") and "seen by" in t for t in texts)
    assert any(t.startswith("partitioning: subset ") and "used by `ce`" in t for t in texts)
    assert classify_text(SKETCHES["cskd"])["data"].value == (
        "modification: paired samples (same_class)"
    )


def test_ground_truth() -> None:
    assert classify_text(library_text("hinton"))["ground_truth"].value == "yes: student"
    assert classify_text(library_text("takd"))["ground_truth"].value == "yes: assistant, student"
    mt = classify_text(library_text("mean_teacher"))
    assert mt["ground_truth"].value == "yes: student (on a subset)"
    no_labels = library_text("hinton").replace(
        "supervise ce: s.logits with cross_entropy weight 1 - alpha", ""
    )
    assert classify_text(no_labels)["ground_truth"].value == "no"
    dkd = classify_text(SKETCHES["dkd"])
    assert any("binary_target" in e.text for e in dkd["ground_truth"].evidence)


def test_legend() -> None:
    legend = classify_text(library_text("fitnets")).legend()
    assert legend.splitlines() == [
        "scheme: offline",
        "knowledge: response (soft targets); feature (raw features)",
        "topology: single_teacher (1 teacher; 1 student)",
        "stages: 2: feature / trains student+adapters (regressor) (partly) -> response+labels / "
        "trains student",
    ]


def test_classification_ignores_the_method_name() -> None:
    """Same graph, different names: nothing is looked up by name."""
    text = library_text("hinton").replace("method hinton", "method byot")
    assert classify_text(text).labels() == classify_text(library_text("hinton")).labels()


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxonomy", "specs/hinton.kd", "--format", "json", "--why"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["method"] == "hinton"
    assert entry["dimensions"]["scheme"]["labels"] == ["offline"]
    assert entry["dimensions"]["scheme"]["evidence"] == [
        "teacher `t` is frozen whenever `s` learns from it"
    ]


def test_cli_table_has_a_row_per_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxonomy", "specs/", "--format", "markdown"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(library_names())


def test_cli_why_prints_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxonomy", "takd", "--why"]) == 0
    out = capsys.readouterr().out
    assert "teacher `ta` is trained only in stage `assistant`" in out


def test_cli_reports_contradicted_claims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table is still printed; the KD311 diagnostics follow, and the exit code is 1."""
    spec = tmp_path / "online.kd"
    spec.write_text(SKETCHES["online"].replace("}\n}", "}\n  claim scheme = offline\n}"))
    assert main(["taxonomy", str(spec)]) == 1
    captured = capsys.readouterr()
    assert "online" in captured.out
    assert "error[KD311]: claims `offline`" in captured.err


def test_cli_other_errors_are_diagnostics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.kd"
    spec.write_text(
        "method bad { teacher t  student s  transfer from t.logits to s.logits with nope }"
    )
    assert main(["taxonomy", str(spec)]) == 1
    assert "KD203" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Property: renaming identifiers and reordering statements changes no label
# ---------------------------------------------------------------------------------------------

_SPECS = {f"library/{n}": library_text(n) for n in library_names()} | {
    f"sketch/{n}": t for n, t in SKETCHES.items()
}
_SPECS = {k: v for k, v in _SPECS.items() if "\n  use " not in v}

names_strategy = st.lists(
    st.text(alphabet="qxzQXZ", min_size=1, max_size=4), min_size=40, max_size=40
).map(lambda xs: [f"{x}_{i}" for i, x in enumerate(xs)])


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(sorted(_SPECS)),
    new_names=names_strategy,
    order=st.permutations(list(range(30))),
)
def test_renaming_and_reordering_keep_the_classification(
    key: str, new_names: list[str], order: list[int]
) -> None:
    text = _SPECS[key]
    changed = rename_and_reorder(text, new_names, order)
    assert classify_text(changed).labels() == classify_text(text).labels()


def test_ft_first_stage_trains_the_paraphraser_not_nothing() -> None:
    """Issue 10: FT's first stage trains its paraphraser; the frozen teacher learns nothing,
    so the reconstruction term is no self-distillation."""
    c = classify_text(library_text("ft"))
    assert c["stages"].value.startswith(
        "2: feature / trains adapters (paraphraser, paraphraser_decoder) -> "
    )
    assert c.scheme == ("offline",)
    assert not any("teaches itself" in e.text for e in c["scheme"].evidence)


PEERS_ENSEMBLE = """method peers_ensemble {
  peer p1, p2, p3
  ensemble group = mean(p1, p2, p3)
  transfer kd1: softmax(T=3) from stopgrad(group.logits) to p1.logits with kl weight 9
  transfer kd2: softmax(T=3) from stopgrad(group.logits) to p2.logits with kl weight 9
  transfer kd3: softmax(T=3) from stopgrad(group.logits) to p3.logits with kl weight 9
  supervise ce1: p1.logits with cross_entropy
  supervise ce2: p2.logits with cross_entropy
  supervise ce3: p3.logits with cross_entropy
}"""


def test_an_ensemble_that_includes_the_learner_is_not_self_distillation() -> None:
    """Issue 10: peers learning from their averaged output are online, with no false
    "its shallower layers learn from its deeper ones" evidence."""
    c = classify_text(PEERS_ENSEMBLE)
    assert c.scheme == ("online",)
    texts = [e.text for f in c.findings for e in f.evidence]
    assert not any("teaches itself" in t or "shallower layers" in t for t in texts)


def test_semckd_weighs_all_layer_pairs_with_a_learned_loss() -> None:
    """Issue 10: SemCKD's mapping is every layer pair (not one-to-one) and its learned
    projections and attention (inside the loss) are adapters."""
    c = classify_text(library_text("semckd"))
    assert "all pairs (weighed by `semckd`)" in c["mapping"].value
    assert "one-to-one" not in c["mapping"].value
    assert "semckd (learned loss, inside the loss, trained)" in c["adapters"].value


GRAM_AND_TOKENS = """method within {
  teacher t
  student s
  transfer g: gram from t.stage[-1] to s.stage[-1] with mse
  transfer r: from token_relation(t.stage[-1], t.stage[-1])
      to token_relation(s.stage[-1], s.stage[-1]) with kl
  transfer f: from fsp(t.stage[1], t.stage[2]) to fsp(s.stage[1], s.stage[2]) with mse
}"""


def test_one_rule_for_relations_inside_one_tap() -> None:
    """Issue 10: a channel Gram matrix and the token relations of a single tap get the same
    category (feature knowledge of that tap); a relation between two taps (FSP) is relation."""
    c = classify_text(GRAM_AND_TOKENS)
    by_term = {tk.term: tk.category for tk in c.terms}
    assert by_term == {"g": "feature", "r": "feature", "f": "relation"}


def test_multi_teacher_is_titled_after_what_it_does() -> None:
    """Issue 10: the spec leaves out You et al.'s relative-dissimilarity term, so it is not
    titled after their paper."""
    m = lower_text(library_text("multi_teacher")).method
    assert m.title == "Multi-teacher averaging of soft targets"
    assert "relative-dissimilarity term" in library_text("multi_teacher")


TF_SELF_UNSTATED = (
    library_text("tfkd_self")
    .replace("teacher t like s", "teacher t")
    .replace("  claim scheme = offline, self\n", "")
)


def test_tf_kd_self_training_is_self_distillation_when_stated() -> None:
    """Issue 10: the teacher stated to be the student's architecture (`like`) makes Tf-KD's
    self-training self-distillation; without the statement it is Hinton KD."""
    c = classify_text(library_text("tfkd_self"))
    assert c.scheme == ("offline", "self")
    assert c.topology == "self"
    assert c["architecture"].value == "same"
    assert any("`t like s`" in e.text for e in c["scheme"].evidence)
    plain = classify_text(TF_SELF_UNSTATED)
    assert plain.scheme == ("offline",)
    assert plain["architecture"].value == "unstated"


def test_architecture_relation_and_initialisation() -> None:
    c = classify_text(library_text("distilbert"))
    assert c["architecture"].value == "family (smaller)"
    assert c["initialisation"].value == "from the teacher's weights"
    assert c.scheme == ("offline",)
    assert classify_text(library_text("hinton"))["initialisation"].value == "from scratch"
    ban = classify_text(SKETCHES["ban"])
    assert ban["initialisation"].value == "from scratch, previous generation"
    assert ban["architecture"].value == "same"


def test_algorithm_axis() -> None:
    """Gou's distillation algorithms where the graph shows them, with evidence."""
    expect = {
        "at": "attention-based",
        "rkd": "graph-based",
        "multi_teacher": "multi-teacher",
        "hinton": "plain",
        "minilm": "attention-based",
    }
    for name, value in expect.items():
        f = classify_text(library_text(name))["algorithm"]
        assert f.value == value, name
        assert any("cannot be told from a spec" in e.text for e in f.evidence)
    f = classify_text(library_text("at"))["algorithm"]
    assert f.why("attention-based")[0].path == ("term", "attention")


def test_like_and_from_name_roles() -> None:
    text = library_text("hinton").replace("teacher t", "teacher t like x")
    _, diags = check_source(SourceFile("x.kd", text))
    (d,) = [d for d in diags if d.code == "KD202"]
    assert d.message == "unknown role `x`"
