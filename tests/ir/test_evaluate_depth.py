"""The evaluator runs on an explicit stack: depth is a diagnostic, never a RecursionError."""

from __future__ import annotations

import sys

import pytest

from kdspec.api import load_method
from kdspec.ir import models as ir
from kdspec.ir.evaluate import MAX_DEPTH, EvalError, Progress, evaluate, uses_progress
from kdspec.ir.traverse import fold, transform, walk


def _chain(levels: int) -> ir.Expr:
    """``1 + (1 + (... + 1))`` ``levels`` deep, alternating with negations."""
    e: ir.Expr = ir.Num(value=1)
    for i in range(levels):
        e = ir.BinOp(op="+", left=ir.Num(value=1), right=e) if i % 2 else ir.Neg(operand=e)
    return e


def _expected(levels: int) -> float:
    v = 1.0
    for i in range(levels):
        v = 1 + v if i % 2 else -v
    return v


def test_an_expression_at_the_depth_limit_evaluates_on_a_shallow_stack(shallow_stack: None) -> None:
    e = _chain(MAX_DEPTH)
    assert evaluate(e, {}) == _expected(MAX_DEPTH)
    assert not uses_progress(e, {})


def test_deeper_than_the_limit_is_the_depth_diagnostic_not_a_recursion_error(
    shallow_stack: None,
) -> None:
    with pytest.raises(EvalError, match="nested too deeply"):
        evaluate(_chain(5000), {})
    assert not uses_progress(_chain(5000), {})  # nothing found within the bound


def test_parameters_chained_to_the_limit_evaluate_and_schedules_are_found(
    shallow_stack: None,
) -> None:
    # p0 = warmup(epochs=2) + 1, p_i = p_{i-1} + 1: 40 parameters, each 2 levels deeper.
    params: dict[str, ir.Expr] = {
        "p0": ir.BinOp(
            op="+",
            left=ir.Call(func="warmup", kwargs={"epochs": ir.Num(value=2)}),
            right=ir.Num(value=1),
        )
    }
    for i in range(1, 40):
        params[f"p{i}"] = ir.BinOp(
            op="+", left=ir.ParamRef(name=f"p{i - 1}"), right=ir.Num(value=1)
        )
    top = ir.ParamRef(name="p39")
    assert uses_progress(top, params)
    assert evaluate(top, params, Progress(epoch=1.0)) == pytest.approx(0.5 + 40)
    assert evaluate(top, params) == pytest.approx(1 + 40)  # a schedule's maximum


def test_a_parameter_cycle_is_still_reported() -> None:
    params: dict[str, ir.Expr] = {"a": ir.ParamRef(name="b"), "b": ir.ParamRef(name="a")}
    with pytest.raises(EvalError, match="cycle"):
        evaluate(ir.ParamRef(name="a"), params)
    assert not uses_progress(ir.ParamRef(name="a"), params)


def test_errors_come_in_evaluation_order() -> None:
    left = ir.ParamRef(name="missing")
    right = ir.BinOp(op="/", left=ir.Num(value=1), right=ir.Num(value=0))
    with pytest.raises(EvalError, match="unknown parameter `missing`"):
        evaluate(ir.BinOp(op="+", left=left, right=right), {})
    with pytest.raises(EvalError, match="division by zero"):
        evaluate(ir.BinOp(op="+", left=right, right=left), {})


def test_a_spec_at_the_parsers_nesting_limit_evaluates() -> None:
    # `- - - ... 2` about as deep as the parser allows, through three chained parameters
    text = "method m {\n  teacher t\n  student s\n"
    for name, ref in (("a", "2"), ("b", "a"), ("c", "b")):
        text += f"  param {name} = {'-' * 94}{ref}\n"
    text += "  transfer kd: softmax from t.logits to s.logits with kl weight c\n}"
    params = dict(load_method("m.kd", text=text).method.params)  # the front end may recurse
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        assert evaluate(ir.ParamRef(name="c"), params) == 2.0
    finally:
        sys.setrecursionlimit(old)


def test_fold_and_transform_handle_thousands_of_levels(shallow_stack: None) -> None:
    e = _chain(5000)
    assert sum(1 for _ in walk(e)) == 5000 + 1 + 5000 // 2
    nums = fold(e, lambda n: list(n.children()), lambda n, vs: sum(vs) + isinstance(n, ir.Num))
    assert nums == 1 + 5000 // 2
    doubled = transform(e, lambda n: ir.Num(value=2) if isinstance(n, ir.Num) else n)
    assert [n.value for n in walk(doubled) if isinstance(n, ir.Num)] == [2.0] * nums
    assert [type(n) for n in walk(doubled)] == [type(n) for n in walk(e)]
