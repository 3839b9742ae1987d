"""``docs/methods.md`` is what ``scripts/gen_methods_doc.py`` generates from the library."""

from __future__ import annotations

import importlib.util

from library_setup import ROOT


def test_methods_doc_is_current() -> None:
    path = ROOT / "scripts" / "gen_methods_doc.py"
    spec = importlib.util.spec_from_file_location("gen_methods_doc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = (ROOT / "docs" / "methods.md").read_text()
    assert doc == module.generate(), "run `python scripts/gen_methods_doc.py`"
