"""The Pygments lexer and the TextMate grammar know every keyword of the grammar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdspec.vocabulary import ROLE_KINDS

ROOT = Path(__file__).resolve().parents[2]
GRAMMAR_WORDS = set(re.findall(r'"([a-z_]+)"', (ROOT / "grammar" / "kdspec.lark").read_text()))


def test_tmlanguage_covers_every_keyword() -> None:
    grammar = json.loads((ROOT / "editors" / "kdspec.tmLanguage.json").read_text())
    repo = grammar["repository"]
    words = set(re.findall(r"[a-z_]+", repo["keyword"]["match"] + repo["role-kind"]["match"]))
    assert words >= GRAMMAR_WORDS
    assert grammar["scopeName"] == "source.kdspec" and grammar["fileTypes"] == ["kd"]
    for rule in repo.values():  # every pattern compiles (Oniguruma is close to Python re here)
        re.compile(rule["match"])


def test_lexer_keywords_are_the_grammars() -> None:
    pytest.importorskip("pygments")
    from kdspec.editor.lexer import KEYWORDS

    assert set(KEYWORDS) | set(ROLE_KINDS) == GRAMMAR_WORDS


def test_lexer_tokens_on_a_library_spec() -> None:
    pytest.importorskip("pygments")
    from pygments.token import Comment, Error, Keyword, Name

    from kdspec.editor.lexer import KdLexer

    text = (ROOT / "specs" / "fitnets.kd").read_text()
    tokens = list(KdLexer().get_tokens(text))
    assert "".join(v for _, v in tokens) == text
    assert not [v for t, v in tokens if t in Error]
    kinds: dict[str, object] = {}
    for t, v in tokens:  # each word's first occurrence
        kinds.setdefault(v, t)
    assert kinds["transfer"] in Keyword and kinds["teacher"] in Keyword.Declaration
    assert kinds["regressor"] is Name.Builtin and kinds["mse"] is Name.Builtin
    assert kinds["hint"] is Name.Label and kinds["logits"] is Name.Attribute
    assert tokens[0][0] in Comment


def test_lexer_registered_through_the_entry_point() -> None:
    pytest.importorskip("pygments")
    from importlib.metadata import entry_points

    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename

    names = {ep.name for ep in entry_points(group="pygments.lexers")}
    if "kdspec" not in names:
        pytest.skip("kdspec installed without its entry points (reinstall: pip install -e .)")
    assert type(get_lexer_by_name("kd")).__name__ == "KdLexer"
    assert type(get_lexer_for_filename("specs/at.kd")).__name__ == "KdLexer"
