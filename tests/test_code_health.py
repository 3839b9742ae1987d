"""Issue 12's rules for the middle and the runtime, checked on the source: no function longer
than ~60 lines of code (docstrings not counted), and no reads of another object's private
fields (``x._name`` where ``x`` is not ``self``/``cls``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kdspec"
CHECKED = [
    *(f"compiler/{p.name}" for p in sorted((ROOT / "compiler").glob("*.py"))),  # every module
    "ir/compose.py",
    "ir/lower.py",
    "ir/lower_core.py",
    "ir/lower_taps.py",
    "runtime/checkpoint.py",
    "runtime/job.py",
    "runtime/trainer.py",
]
MAX_LINES = 60


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if not body:
        return 0
    return (body[-1].end_lineno or 0) - body[0].lineno + 1


def _problems(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = _code_lines(node)
            if n > MAX_LINES:
                out.append(f"{path.name}:{node.lineno}: `{node.name}` has {n} lines of code")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if not own and not node.attr.startswith("__"):
                out.append(f"{path.name}:{node.lineno}: reads `{ast.unparse(node)}`")
    return out


@pytest.mark.parametrize("module", CHECKED)
def test_short_functions_and_no_private_reads(module: str) -> None:
    assert _problems(ROOT / module) == []


def test_the_checker_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    body = "\n".join(f"    x = {i}" for i in range(MAX_LINES + 1))
    bad.write_text(f'def long():\n    """Doc."""\n{body}\n\ndef peek(d):\n    return d._secret\n')
    problems = _problems(bad)
    assert any("`long` has 61 lines" in p for p in problems)
    assert any("reads `d._secret`" in p for p in problems)
    short = tmp_path / "ok.py"
    lines = body.splitlines()[: MAX_LINES - 1]
    short.write_text('def ok(self):\n    """Doc."""\n' + "\n".join(lines) + "\n    self._x = 1\n")
    assert _problems(short) == []


def test_compiler_modules_are_all_checked() -> None:
    on_disk = {f"compiler/{p.name}" for p in (ROOT / "compiler").glob("*.py")}
    assert on_disk <= set(CHECKED) and "compiler/nodes.py" in CHECKED


def test_batch_norms_are_every_public_batch_norm_of_torch() -> None:
    """taps/job recognise batch norm by public classes: none of torch's is missed."""
    from torch import nn

    from kdspec.compiler.taps import BATCH_NORMS

    base = nn.modules.batchnorm._BatchNorm  # torch's private base, read here only to compare
    found = [c for c in base.__subclasses__() if c.__module__ == "torch.nn.modules.batchnorm"]
    assert found and all(issubclass(c, BATCH_NORMS) for c in found)
    assert all(issubclass(c, base) for c in BATCH_NORMS)
