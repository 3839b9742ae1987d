"""The language reference (docs/language.md) stays true and complete.

Every ```kd block must be a method that checks clean and is already in canonical form; warnings
are allowed only where an ``# expect:`` line names them. Every ```kd-error block must produce
the codes on its ``# expect: KDnnn[, KDnnn]`` line, and no error it does not name. A
``# params: NAME=VALUE, ...`` line passes parameter overrides, as ``--param`` does. Every
function of the vocabulary, every kind of knowledge and every diagnostic code must have a table
row, and a function's row must list its parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdspec.api import check_source
from kdspec.diagnostics import Severity
from kdspec.diagnostics.codes import CODES
from kdspec.ir.canonical import semantic_key
from kdspec.source import SourceFile
from kdspec.syntax.fmt import format_text
from kdspec.vocabulary import FUNCTIONS, KINDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "language.md"
TEXT = DOC.read_text(encoding="utf-8")

_FENCE = re.compile(r"^```(kd|kd-error|kd-equal)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_EXPECT = re.compile(r"^#\s*expect:\s*(.+)$", re.MULTILINE)
_PARAMS = re.compile(r"^#\s*params:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One fenced spec of the document."""

    kind: str  # "kd" | "kd-error" | "kd-equal" (methods equal after canonicalisation)
    text: str
    line: int  # 1-based line of the opening fence

    @property
    def expected(self) -> set[str]:
        found = _EXPECT.search(self.text)
        return {c.strip() for c in found.group(1).split(",")} if found else set()

    @property
    def overrides(self) -> dict[str, object]:
        found = _PARAMS.search(self.text)
        if found is None:
            return {}
        pairs = (item.partition("=") for item in found.group(1).split(","))
        return {name.strip(): value.strip() for name, _, value in pairs}


def _blocks() -> list[Block]:
    return [
        Block(m.group(1), m.group(2), TEXT.count("\n", 0, m.start()) + 1)
        for m in _FENCE.finditer(TEXT)
    ]


BLOCKS = _blocks()


def _check(block: Block) -> list[tuple[str, Severity]]:
    # Named as if it lived in docs/, so relative imports (`../specs/...`) resolve.
    source = SourceFile(str(DOC.with_name(f"language-{block.line}.kd")), block.text)
    _, diagnostics = check_source(source, block.overrides)
    return [(d.code, d.severity) for d in diagnostics]


def _id(block: Block) -> str:
    return f"{block.kind}@{block.line}"


def test_the_document_has_both_kinds_of_block() -> None:
    kinds = [b.kind for b in BLOCKS]
    assert kinds.count("kd") >= 20
    assert kinds.count("kd-error") >= 5
    assert kinds.count("kd-equal") >= 1


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "kd"], ids=_id)
def test_kd_blocks_check_clean(block: Block) -> None:
    found = _check(block)
    errors = [code for code, sev in found if sev is Severity.ERROR]
    assert errors == [], f"line {block.line}: errors {errors}"
    unexpected = [code for code, _ in found if code not in block.expected]
    assert unexpected == [], f"line {block.line}: undeclared warnings {unexpected}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "kd"], ids=_id)
def test_kd_blocks_are_canonical(block: Block) -> None:
    assert format_text(block.text) == block.text


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "kd-error"], ids=_id)
def test_kd_error_blocks_produce_their_codes(block: Block) -> None:
    assert block.text.startswith("# expect: "), f"line {block.line}: no `# expect:` first line"
    assert block.expected <= set(CODES), f"line {block.line}: unknown code in {block.expected}"
    found = _check(block)
    codes = {code for code, _ in found}
    errors = {code for code, sev in found if sev is Severity.ERROR}
    assert block.expected <= codes, f"line {block.line}: missing {block.expected - codes}"
    assert errors <= block.expected, f"line {block.line}: other errors {errors - block.expected}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "kd-equal"], ids=_id)
def test_kd_equal_blocks_are_one_method(block: Block) -> None:
    source = SourceFile(str(DOC.with_name(f"language-{block.line}.kd")), block.text)
    lowered, diagnostics = check_source(source)
    assert [d.code for d in diagnostics] == [], f"line {block.line}"
    assert format_text(block.text) == block.text
    keys = {semantic_key(low.method) for low in lowered}
    assert len(lowered) >= 2 and len(keys) == 1, f"line {block.line}: the methods differ"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_has_a_table_row_with_its_parameters(name: str) -> None:
    rows = [line for line in TEXT.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"no table row for `{name}`"
    for param in FUNCTIONS[name].params:
        assert f"`{param}" in rows[0], f"row of `{name}` does not list `{param}`"


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_code_is_in_the_table(code: str) -> None:
    assert re.search(rf"^\| {code} \| ", TEXT, re.MULTILINE), f"{code} has no table row"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_in_the_kinds_table(kind: str) -> None:
    assert f"| `{kind}` | " in TEXT, f"kind `{kind}` has no table row"
