"""Load the grammar once and build the LALR parser (the only module that builds a Lark)."""

from __future__ import annotations

from functools import cache

from lark import Lark, Token

from kdspec._resources import grammar_path


def grammar_text() -> str:
    """The text of ``grammar/kdspec.lark``."""
    return grammar_path().read_text(encoding="utf-8")


@cache
def parser() -> tuple[Lark, list[Token]]:
    """The LALR parser and the list its lexer appends comments to (cleared per parse)."""
    comments: list[Token] = []
    lark = Lark(
        grammar_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": comments.append},
        cache=True,  # grammar analysis cached in the temp dir: `kdspec check` starts 2x faster
    )
    return lark, comments
