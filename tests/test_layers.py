"""The layer rules of the architecture, enforced on the import statements of every module.

- lark is imported only by ``kdspec.syntax`` (the grammar is one package's business);
- torch is imported only by the layers that run models (``compiler``, ``runtime``, ``ops``,
  ``zoo``, ``data``, the framework ``integrations``, the benchmarks in ``bench``) and, lazily
  inside functions, by the CLI;
- the front end (``api`` and everything it imports) never imports torch, so ``kdspec check``
  starts fast on machines without a GPU stack.

The whole layer order is an import-linter contract in ``pyproject.toml`` (``lint-imports``,
run by ``make test``); the test below also keeps the drawing of the package free of cycles for
folders the contract does not name yet.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdspec"
TORCH_LAYERS = {"compiler", "runtime", "ops", "zoo", "data", "integrations", "bench"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module top level?) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


def _modules() -> list[tuple[str, Path]]:
    return [(p.relative_to(PACKAGE).parts[0], p) for p in sorted(PACKAGE.rglob("*.py"))]


def test_lark_only_in_syntax():
    offenders = [
        str(p)
        for layer, p in _modules()
        if layer != "syntax"
        for name, _ in _imports(p)
        if name.split(".")[0] == "lark"
    ]
    assert not offenders


def test_torch_only_where_models_run():
    offenders = []
    for layer, path in _modules():
        for name, at_top in _imports(path):
            if name.split(".")[0] != "torch" or layer in TORCH_LAYERS:
                continue
            if layer == "cli" and not at_top:
                continue  # subcommands that train import torch lazily
            offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, offenders


def test_front_end_imports_no_torch():
    code = (
        "import sys, kdspec.api, kdspec.passes, kdspec.graph.explain, kdspec.graph.export, "
        "kdspec.syntax.fmt, kdspec.cli.main; kdspec.cli.main.build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_vocabulary_is_the_bottom_layer():
    """Operator facts sit below every other layer: the vocabulary imports no other package."""
    allowed = {"vocabulary"}
    offenders = [
        f"{p.relative_to(PACKAGE)} imports {name}"
        for layer, p in _modules()
        if layer == "vocabulary"
        for name, _ in _imports(p)
        if name.startswith("kdspec.") and name.split(".")[1] not in allowed
    ]
    assert not offenders, offenders


def test_imports_between_folders_have_no_cycle():
    grimp = pytest.importorskip("grimp")
    import networkx as nx

    graph = grimp.build_graph("kdspec")
    folders = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = module.split(".")[1:2], imported.split(".")[1:2]
            if a and b and a != b:
                folders.add_edge(a[0], b[0])
    assert "taxonomy" in folders and "ir" in folders
    assert list(nx.simple_cycles(folders)) == []
