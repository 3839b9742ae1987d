"""Load the grammar once and build the LALR parser (the only module that builds a Lark)."""

from __future__ import annotations

import os
import stat
import sys
from functools import cache
from pathlib import Path

import lark as _lark
from lark import Lark, Token

from kdspec._resources import grammar_path


def grammar_text() -> str:
    """The text of ``grammar/kdspec.lark``."""
    return grammar_path().read_text(encoding="utf-8")


def _owned_private(st: os.stat_result, *, group_other_mask: int) -> bool:
    getuid = getattr(os, "getuid", None)
    return (getuid is None or st.st_uid == getuid()) and not st.st_mode & group_other_mask


def parser_cache_file() -> str | None:
    """Where the parse tables are cached, or None when no safe place exists.

    The cache is a pickle, so loading it runs code: it lives only in a per-user folder created
    0700 (never the shared temp folder lark defaults to), and folder and file are checked to be
    ours and writable by nobody else before lark may load them.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdspec-parser"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(base)
        if not stat.S_ISDIR(st.st_mode) or not _owned_private(st, group_other_mask=0o077):
            return None
        name = f"parser-lark{_lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.pickle"
        path = base / name
        try:
            fst = os.lstat(path)
        except FileNotFoundError:
            return str(path)
        if stat.S_ISREG(fst.st_mode) and _owned_private(fst, group_other_mask=0o022):
            return str(path)
    except (OSError, RuntimeError):  # no home, read-only home, ...: parse without a cache
        return None
    return None


@cache
def parser() -> tuple[Lark, list[Token]]:
    """The LALR parser and the list its lexer appends comments to (cleared per parse)."""
    comments: list[Token] = []
    cache_file = parser_cache_file()
    lark = Lark(
        grammar_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": comments.append},
        # grammar analysis cached (`kdspec check` starts 2x faster), only in a private folder
        cache=cache_file if cache_file is not None else False,
    )
    return lark, comments
