"""The whole checking pipeline (parse, lower, graph, every pass) is total: on any input it
returns diagnostics, never raises. Inputs: single-character edits of every library spec and
token-level recombinations of their statements."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kdspec.api import check_source
from kdspec.source import SourceFile

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.kd"))
TEXTS = [p.read_text(encoding="utf-8") for p in SPECS]
ALPHABET = 'abcdefghijklmnopqrstuvwxyz_0123456789.,:()[]{}=+-*/^@|"# \n'


def _check(text: str) -> None:
    _, diags = check_source(SourceFile("fuzz.kd", text))
    for d in diags:
        assert d.code.startswith("KD") and d.message


@settings(max_examples=300)
@given(
    st.sampled_from(TEXTS),
    st.integers(min_value=0),
    st.sampled_from(["del", "ins", "sub"]),
    st.sampled_from(ALPHABET),
)
def test_single_character_edits_of_library_specs_give_diagnostics_only(text, at, op, char):
    i = at % (len(text) + 1)
    if op == "del":
        edited = text[:i] + text[i + 1 :]
    elif op == "ins":
        edited = text[:i] + char + text[i:]
    else:
        edited = text[:i] + char + text[i + 1 :]
    _check(edited)


def _statements(text: str) -> list[str]:
    body = text[text.index("{") + 1 : text.rindex("}")]
    return [line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


STATEMENTS = sorted({s for t in TEXTS for s in _statements(t) if "{" not in s and "}" not in s})


@settings(max_examples=200)
@given(st.lists(st.sampled_from(STATEMENTS), min_size=1, max_size=12))
def test_recombined_statements_give_diagnostics_only(lines):
    _check("method fuzz {\n" + "\n".join(lines) + "\n}\n")
