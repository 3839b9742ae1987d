"""``docs/taxonomy.md`` is what ``scripts/gen_taxonomy_doc.py`` generates from the library,
and its table against Gou et al. explains every disagreement."""

from __future__ import annotations

import importlib.util
import re
import sys

from library_setup import ROOT


def _module():  # type: ignore[no-untyped-def]
    path = ROOT / "scripts" / "gen_taxonomy_doc.py"
    spec = importlib.util.spec_from_file_location("gen_taxonomy_doc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_taxonomy_doc_is_current() -> None:
    doc = (ROOT / "docs" / "taxonomy.md").read_text(encoding="utf-8")
    assert doc == _module().generate(), "run `python scripts/gen_taxonomy_doc.py`"


def test_every_disagreement_with_gou_is_explained() -> None:
    doc = (ROOT / "docs" / "taxonomy.md").read_text(encoding="utf-8")
    section = doc.split("## The library against Gou et al.")[1].split("\n## ")[0]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    assert len(rows) >= 20
    for row in rows:
        name = re.match(r"\| `(\w+)`", row).group(1)  # type: ignore[union-attr]
        if "**no**" in row:
            assert f"- **`{name}`**: " in section, name
    for name in ("one", "dml"):  # issue 10: both are in the list
        assert f"- **`{name}`**: " in section


def test_the_doc_cites_no_file_outside_the_repository() -> None:
    doc = (ROOT / "docs" / "taxonomy.md").read_text(encoding="utf-8")
    for cited in re.findall(r"`([\w./-]+\.(?:md|kd|py))`", doc):
        assert (ROOT / cited).exists() or (ROOT / "specs" / cited).exists(), cited
