"""Editor logic (no pygls needed): diagnostics, hover, completion and formatting on buffers."""

from __future__ import annotations

from pathlib import Path

from kdspec.editor import analysis

ROOT = Path(__file__).resolve().parents[2]
FITNETS = (ROOT / "specs" / "fitnets.kd").read_text()


def at(text: str, needle: str, delta: int = 0) -> int:
    return text.index(needle) + delta


def test_clean_library_spec_has_no_diagnostics() -> None:
    lowered, diags = analysis.analyse(FITNETS, str(ROOT / "specs" / "fitnets.kd"))
    assert [d.code for d in diags] == []
    assert lowered[0].method.name == "fitnets"


def test_typo_gives_the_checker_diagnostic_with_its_span() -> None:
    bad = FITNETS.replace("from t.logits", "from t.logit")
    _, diags = analysis.analyse(bad, "bad.kd")
    assert diags, "a misspelt tap point must be reported"
    span = diags[0].labels[0].span
    assert bad[span.start : span.end].startswith("t.logit")


def test_hover_function_shows_vocabulary_entry_and_side_kind() -> None:
    text = analysis.hover(FITNETS, "f.kd", at(FITNETS, "regressor(s", 3))
    assert text is not None
    assert "**regressor**" in text and "adapter" in text
    assert "student side of `hint`: carries `features`" in text


def test_hover_side_kind_follows_the_knowledge_pipeline() -> None:
    # `softmax(T) from t.logits`: the teacher side is a distribution, not raw logits
    text = analysis.hover(FITNETS, "f.kd", at(FITNETS, "from t.logits", 7))
    assert text == "teacher side of `kd`: carries `distribution`"


def test_hover_loss_and_param_and_nothing() -> None:
    assert "**kl**" in (analysis.hover(FITNETS, "f.kd", at(FITNETS, "with kl", 6)) or "")
    assert analysis.hover(FITNETS, "f.kd", at(FITNETS, "weight beta", 8)) == "param `beta` = 0.5"
    assert analysis.hover(FITNETS, "f.kd", at(FITNETS, "stage distill {", 14)) is None


def test_complete_taps_after_role_dot() -> None:
    cut = at(FITNETS, "t.logits", 2)
    items = analysis.completions(FITNETS[:cut] + FITNETS[cut + 6 :], "f.kd", cut)
    assert [c.label for c in items] == ["logits", "embedding", "input", "output", "stage"]
    assert {c.kind for c in items} == {"tap"}


def test_complete_losses_after_with_and_terms_in_stage() -> None:
    losses = analysis.completions(FITNETS, "f.kd", at(FITNETS, "with kl", 5))
    assert "mse" in [c.label for c in losses] and "softmax" not in [c.label for c in losses]
    assert {c.kind for c in losses} == {"function"}
    terms = analysis.completions(FITNETS, "f.kd", at(FITNETS, "losses kd", 7))
    assert {c.label for c in terms if c.kind == "term"} == {"hint", "kd", "ce"}


def test_complete_roles_while_the_buffer_does_not_parse() -> None:
    text = "method m {\n  teacher big\n  student small\n  transfer from "
    labels = {c.label: c.kind for c in analysis.completions(text, "m.kd", len(text))}
    assert labels["big"] == "role" and labels["small"] == "role"
    assert labels["softmax"] == "function"


def test_formatted_is_kdspec_fmt() -> None:
    messy = (
        "method m {\nteacher t\n   student s\n"
        "transfer softmax(T=4) from t.logits to s.logits with kl}\n"
    )
    out = analysis.formatted(messy, "m.kd")
    assert out is not None and "  teacher t\n  student s\n" in out
    assert analysis.formatted(out, "m.kd") == out
    assert analysis.formatted("method {", "m.kd") is None
