"""A Pygments lexer for ``.kd`` specs, registered as ``kd`` / ``kdspec`` through the
``pygments.lexers`` entry point, so Sphinx, MkDocs and ``pygmentize`` highlight specs::

    pygmentize -l kdspec specs/fitnets.kd
"""

from __future__ import annotations

from typing import Any, ClassVar

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

from kdspec.vocabulary import FUNCTIONS, ROLE_KINDS, TAP_IO, TAP_POINTS

__all__ = ["KEYWORDS", "KdLexer"]

# Every keyword string of grammar/kdspec.lark except the role kinds (tests/editor checks this).
KEYWORDS = (
    "as", "cite", "claim", "deeper", "def", "else", "ensemble", "epoch", "epochs", "for",
    "freeze", "from", "frozen", "handoff", "if", "import", "let", "like", "losses", "map",
    "method", "on", "only", "param", "predict", "repeat", "return", "sees", "smaller", "stage",
    "step", "steps", "subset", "supervise", "then", "to", "train", "trained", "transfer", "use",
    "view", "weight", "wider", "with",
)  # fmt: skip


class KdLexer(RegexLexer):
    """Highlights kdspec method specs (``.kd``)."""

    name = "kdspec"
    aliases: ClassVar[list[str]] = ["kd", "kdspec"]
    filenames: ClassVar[list[str]] = ["*.kd"]
    mimetypes: ClassVar[list[str]] = ["text/x-kdspec"]
    url = "https://github.com/kdspec/kdspec"

    tokens: ClassVar[dict[str, list[Any]]] = {
        "root": [
            (r"\s+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r'"([^"\\\n]|\\.)*"', String.Double),
            (r"\d+(\.\d+)?([eE][-+]?\d+)?", Number),
            (words(ROLE_KINDS, suffix=r"\b"), Keyword.Declaration),
            (words(KEYWORDS, suffix=r"\b"), Keyword),
            (
                r"(\.)(" + "|".join((*TAP_POINTS, *TAP_IO)) + r")\b",
                bygroups(Punctuation, Name.Attribute),
            ),
            (r"([A-Za-z_]\w*)(\s*)(:)(?!:)", bygroups(Name.Label, Whitespace, Punctuation)),
            (words(tuple(sorted(FUNCTIONS)), suffix=r"\b"), Name.Builtin),
            (r"[A-Za-z_]\w*", Name),
            (r"\.\.|->|[-+*/^%=|@]", Operator),
            (r"[{}()\[\],.:]", Punctuation),
            (r".", Text),
        ]
    }
