"""The IR's analyses run on explicit stacks: thousands of levels under a recursion limit of 150.

Each function here once recursed per level of the expression (issue 12: the IR walk replaces
the private recursions); a spec cannot nest this deep (KD106), but IR built in Python can, and
`use` composes expressions deeper than one file allows.
"""

from __future__ import annotations

from kdspec.graph import types
from kdspec.ir import models as ir
from kdspec.ir.canonical import fold as fold_sum
from kdspec.ir.traverse import depth

LEVELS = 3000


def _sum(levels: int, leaf: ir.Expr) -> ir.Expr:
    e = leaf
    for _ in range(levels):
        e = ir.BinOp(op="+", left=ir.Num(value=1), right=e)
    return e


def _method(**kw: object) -> ir.Method:
    return ir.Method(name="m", params={"p": ir.Num(value=2)}, **kw)  # type: ignore[arg-type]


def test_depth_counts_levels(shallow_stack: None) -> None:
    assert depth(ir.Num(value=1)) == 1
    assert depth(_sum(LEVELS, ir.Num(value=1))) == LEVELS + 1


def test_static_values_are_typed_and_checked_without_recursion(shallow_stack: None) -> None:
    m = _method()
    e = _sum(LEVELS, ir.ParamRef(name="p"))
    assert types.is_static(e, m)
    assert types.expr_kind(e, m) == "scalar"
    assert types.value_type(e, m) == types.SCALAR
    tap = ir.Tap(role="s", point="logits")
    assert not types.is_static(_sum(LEVELS, tap), m)


def test_a_long_chain_of_lets_has_the_kind_of_its_end(shallow_stack: None) -> None:
    lets = [ir.Let(name="l0", value=ir.Tap(role="s", point="logits"))]
    lets += [
        ir.Let(name=f"l{i}", value=ir.Call(func="stopgrad", args=(ir.LetRef(name=f"l{i - 1}"),)))
        for i in range(1, LEVELS)
    ]
    m = _method(lets=tuple(lets))
    assert types.expr_kind(ir.LetRef(name=f"l{LEVELS - 1}"), m) == "logits"


def test_axis_errors_are_reported_at_the_same_place(shallow_stack: None) -> None:
    tap = ir.Tap(role="s", point="logits")
    feat = ir.Tap(role="t", point="stage", first=1)
    bad = ir.BinOp(op="+", left=tap, right=feat)
    e = _sum(LEVELS, bad)
    found: list[tuple[str, tuple[object, ...]]] = []
    types.value_type(e, _method(), lambda code, msg, path: found.append((code, path)))
    assert len(found) == 1 and found[0][1] == ("right",) * LEVELS


def test_sums_fold_without_recursion(shallow_stack: None) -> None:
    assert fold_sum(_sum(LEVELS, ir.Num(value=1))) == ir.Num(value=LEVELS + 1)
