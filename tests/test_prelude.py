"""The prelude (kdspec/prelude/*.kd): functions of the library written in kdspec itself."""

from __future__ import annotations

import re
from pathlib import Path

from kdspec.ir.lower import _module_defs, _prelude_files
from kdspec.ops import LOSSES, TRANSFORMS
from kdspec.vocabulary import FUNCTIONS, PRELUDE_IMPL

DOC = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text(encoding="utf-8")


def _defs() -> dict[str, str]:
    """Every prelude def by name, with its body as written."""
    out: dict[str, str] = {}
    for path in _prelude_files():
        found, errors = _module_defs(path)
        assert not errors, errors
        text = path.read_text(encoding="utf-8")
        for name in found:
            m = re.search(rf"^def {name}\(.*?\) = (.+)$", text, re.MULTILINE)
            assert m, f"`{name}`: one-line `def ... = body` expected"
            out[name] = m.group(1).strip()
    return out


def test_the_prelude_defines_exactly_the_functions_the_vocabulary_says() -> None:
    declared = {n for n, f in FUNCTIONS.items() if f.impl.startswith(PRELUDE_IMPL)}
    assert set(_defs()) == declared
    assert len(declared) >= 6


def test_prelude_functions_have_no_python() -> None:
    for name in _defs():
        assert name not in TRANSFORMS and name not in LOSSES, name


def test_the_reference_shows_each_body_as_written() -> None:
    for name, body in _defs().items():
        assert f"| `{name}` | `{body}` |" in DOC, f"docs/language.md: no prelude row for `{name}`"
