"""Issue 13: a long-lived process stays bounded in memory and time.

`kdspec lsp` re-checks a buffer on every edit for hours; the fuzz harness checks hundreds of
thousands of specs in one worker. Before this test, each syntax error kept the checked file's
parse alive (the syntax-error examples are parsed once and their errors raised again, and each
raise attached the handler's frames to the kept error), so a worker grew by ~130 MiB per 1,000
cases and its garbage collections took seconds. Every cache keyed by an input is a
:class:`kdspec.lru.Lru`; here they are shrunk to two entries, fed many distinct specs through
every front-end command, and checked to stay within their bounds while nothing else grows.
"""

from __future__ import annotations

import contextlib
import gc
import io
import sys
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdspec.api import check_source
from kdspec.cli.main import main
from kdspec.lru import CACHES, Lru
from kdspec.source import SourceFile
from kdspec.syntax import try_parse
from kdspec.syntax.fmt import format_module

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ["hinton", "fitnets", "at", "dkd", "crd", "rkd", "pkt", "sp"]


def _distinct_specs(round_: int, n: int) -> Iterator[tuple[str, str]]:
    """``n`` specs no earlier round saw: library methods renamed and with changed numbers, and
    broken copies of them (a syntax error, an unknown name)."""
    for i in range(n):
        name = LIBRARY[i % len(LIBRARY)]
        text = (ROOT / "specs" / f"{name}.kd").read_text(encoding="utf-8")
        tag = f"r{round_}n{i}"
        text = text.replace(f"method {name}", f"method {name}_{tag}", 1)
        text = text.replace("T=4", f"T={4 + round_ * 100 + i}")
        yield f"{tag}.kd", text
        if i % 3 == 0:
            yield f"{tag}_syntax.kd", text.replace("{", "{ ) " + tag + " ", 2)
        elif i % 3 == 1:
            yield f"{tag}_name.kd", text.replace("from t.", f"from t_{tag}.", 1)


def _every_command(tmp: Path, name: str, text: str) -> None:
    """What `check`, `fmt`, `graph`, `identify`, `taxonomy`, `ir` and the editor do to a file."""
    from kdspec.editor.analysis import analyse

    source = SourceFile(name, text)
    check_source(source)
    module, _ = try_parse(source)
    if module is not None:
        format_module(module, text)
    analyse(text, name)
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    for argv in (["graph", "--format", "dot"], ["identify"], ["taxonomy", "--why"], ["ir"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main([*argv, str(path)])


def _module_state() -> dict[str, int]:
    """The size of every module-level container and function cache of kdspec."""
    out: dict[str, int] = {}
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("kdspec") or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            key = f"{mod_name}.{attr}"
            if isinstance(value, (dict, list, set, OrderedDict, Lru)):
                out[key] = len(value)
            elif callable(getattr(value, "cache_info", None)):
                info = value.cache_info()
                if info.maxsize is None:  # an lru_cache with a maxsize is bounded already
                    out[key] = info.currsize
    return out


@pytest.fixture
def small_caches() -> Iterator[list[Lru[Any, Any]]]:
    caches = list(CACHES)
    saved = [(c, c.maxsize) for c in caches]
    for c in caches:
        c.maxsize = 2
        c.clear()
    yield caches
    for c, size in saved:
        c.maxsize = size


def _live_objects_without_caches(caches: list[Lru[Any, Any]]) -> int:
    """Objects alive once the bounded caches are emptied: what else the process holds."""
    from kdspec.editor.analysis import analyse

    for cache in caches:
        cache.clear()
    analyse.cache_clear()
    gc.collect()
    return len(gc.get_objects())


def test_distinct_specs_leave_every_cache_within_its_bound(
    tmp_path: Path, small_caches: list[Lru[Any, Any]]
) -> None:
    for name, text in _distinct_specs(0, 16):  # warm up: imports, tables, the parser
        _every_command(tmp_path, name, text)
    before = _module_state()
    objects = _live_objects_without_caches(small_caches)
    for name, text in _distinct_specs(1, 16):
        _every_command(tmp_path, name, text)
    assert {c.name for c in small_caches} >= {"parsed files", "def body calls", "loss types"}
    for cache in small_caches:
        assert len(cache) <= cache.maxsize, cache
    assert any(len(c) == c.maxsize for c in small_caches)  # the caches were used
    after = _module_state()
    grew = {k: (before.get(k, 0), n) for k, n in after.items() if n > before.get(k, 0)}
    assert not grew, f"module-level state grew with distinct inputs: {grew}"
    grown = _live_objects_without_caches(small_caches) - objects
    # 26 more files through seven commands: a leak per file is hundreds of objects each
    assert grown < 300, f"{grown} more objects alive after 16 more distinct specs"


def test_a_syntax_error_does_not_keep_the_checked_file_alive() -> None:
    source = SourceFile("broken.kd", "method m {\n  teacher t\n  student s\n  transfer ) x\n}\n")
    _, diags = check_source(source)
    assert any(d.code in ("KD101", "KD102") for d in diags)  # a syntax error
    ref = weakref.ref(source)
    del source, diags
    gc.collect()
    assert ref() is None, "a kept syntax-error example holds the checked file's frames"
