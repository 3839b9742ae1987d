"""The IR's one traversal API (kdspec.ir.traverse, also as methods of expression nodes)."""

from __future__ import annotations

import pytest

from kdspec.api import load_method
from kdspec.ir import models as ir
from kdspec.ir.traverse import transform

TEXT = """method m {
  param T = 4
  teacher t
  student s
  let shared = conv1x1(s.stage[1])
  let twice = mean(shared, shared, weights=[1, 3])
  transfer kd: softmax(T) from stopgrad(t.logits) to s.logits with kl weight T^2
  transfer h: from t.stage[1] to twice with mse weight -(-T)
}"""


def method() -> ir.Method:
    return load_method("m.kd", text=TEXT).method


def test_children_of_a_call_are_positional_then_keyword_arguments() -> None:
    call = ir.Call(func="f", args=(ir.Num(value=1),), kwargs={"k": ir.Str(value="x")})
    assert call.children() == (ir.Num(value=1), ir.Str(value="x"))
    assert ir.Neg(operand=ir.Num(value=2)).children() == (ir.Num(value=2),)
    assert ir.Num(value=1).children() == ()


def test_walk_is_preorder_and_follows_lets_only_with_a_method() -> None:
    m = method()
    h = m.term("h")
    assert h is not None and isinstance(h.target, ir.LetRef)
    assert [type(n).__name__ for n in h.target.walk()] == ["LetRef"]
    nodes = list(h.target.walk(m))
    # twice -> mean(shared, shared) -> each shared -> conv1x1(s.stage[1])
    assert [type(n).__name__ for n in nodes] == [
        "LetRef", "Call", "LetRef", "Call", "Tap", "LetRef", "Call", "Tap", "ListE", "Num", "Num",
    ]  # fmt: skip
    assert [t.role for t in h.target.find_all(ir.Tap, m)] == ["s", "s"]


def test_walk_stops_on_a_let_cycle() -> None:
    m = ir.Method(
        name="c",
        lets=(ir.Let(name="a", value=ir.Call(func="f", args=(ir.LetRef(name="a"),))),),
    )
    assert len(list(ir.LetRef(name="a").walk(m))) == 3  # a, f(a), a (not entered again)


def test_prune_yields_the_node_but_not_its_children() -> None:
    kd = method().term("kd")
    assert kd is not None and kd.source is not None
    stop = list(kd.source.walk(prune=lambda n: isinstance(n, ir.Call)))
    assert len(stop) == 1 and isinstance(stop[0], ir.Call) and stop[0].func == "stopgrad"


def test_find_all_sees_every_kind_of_child() -> None:
    kd = method().term("kd")
    assert kd is not None
    params = [p.name for e in kd.expressions() for p in e.find_all(ir.ParamRef)]
    assert params == ["T", "T"]  # softmax(T) and T^2
    h = method().term("h")
    assert h is not None
    assert [type(n).__name__ for n in h.weight.walk()] == ["Neg", "Neg", "ParamRef"]
    twice = method().let("twice")
    assert twice is not None
    assert [n.value for n in twice.value.find_all(ir.Num)] == [1.0, 3.0]  # inside a keyword list
    assert list(ir.walk(None)) == []


def test_transform_rebuilds_bottom_up_and_keeps_untouched_nodes() -> None:
    m = method()
    kd = m.term("kd")
    assert kd is not None
    seen: list[str] = []

    def inline(e: ir.Expr) -> ir.Expr:
        seen.append(type(e).__name__)
        if isinstance(e, ir.ParamRef):
            return ir.BinOp(op="+", left=ir.Num(value=1), right=ir.ParamRef(name="T"))
        return e

    new = kd.weight.transform(inline)
    assert ir.find_all(new, ir.ParamRef) and "Num" in seen
    # the replacement is kept as it is: its own ParamRef is not replaced again
    assert sum(1 for _ in new.find_all(ir.ParamRef)) == 1
    assert sum(1 for _ in new.find_all(ir.BinOp)) == 2
    untouched = kd.loss.transform(inline)
    assert untouched is kd.loss


def test_method_lookups() -> None:
    m = method()
    assert m.let("shared") is not None and m.let("nope") is None
    assert m.ensemble("nope") is None
    exprs = list(m.expressions())
    # the parameter's value, two let values, and each term's sides, loss, weight, knowledge
    assert exprs[0] == ir.Num(value=4.0)
    assert any(isinstance(e, ir.LetRef) and e.name == "twice" for e in exprs)
    assert sum(isinstance(e, ir.Call) and e.func in ("kl", "mse") for e in exprs) == 2


def test_visitor_dispatches_on_the_class_then_its_bases() -> None:
    from kdspec.ir.traverse import Visitor

    class Kinds(Visitor[str]):
        def visit_BinOp(self, e: ir.BinOp) -> str:
            return f"({self.visit(e.left)} {e.op} {self.visit(e.right)})"

        def visit__ExprNode(self, e: ir.Expr) -> str:  # any other expression: its base
            return type(e).__name__

    e = ir.BinOp(op="*", left=ir.ParamRef(name="a"), right=ir.Num(value=2))
    assert Kinds().visit(e) == "(ParamRef * Num)"

    class Strict(Visitor[int]):
        def visit_Num(self, e: ir.Num) -> int:
            return 1

    assert Strict().visit(ir.Num(value=3)) == 1
    with pytest.raises(TypeError, match="cannot visit `Str`"):
        Strict().visit(ir.Str(value="x"))


def test_transform_keeps_a_change_of_key_order() -> None:
    """Dicts compare equal in any order: a rewrite that only sorts a call's keywords (the
    canonical form) must still reach the parent, or equal methods print differently."""
    inner = ir.Call(
        func="cosine_schedule", kwargs={"start": ir.Num(value=0), "end": ir.Num(value=1)}
    )
    outer = ir.Call(func="f", args=(inner,), kwargs={"b": ir.Num(value=1), "a": inner})

    def sort(node):  # type: ignore[no-untyped-def]
        if isinstance(node, ir.Call):
            return node.model_copy(update={"kwargs": dict(sorted(node.kwargs.items()))})
        return node

    got = transform(outer, sort)
    assert list(got.kwargs) == ["a", "b"]
    assert list(got.args[0].kwargs) == ["end", "start"]
    assert list(got.kwargs["a"].kwargs) == ["end", "start"]


def test_transform_returns_the_same_object_where_nothing_changed() -> None:
    call = ir.Call(func="f", args=(ir.Num(value=1),), kwargs={"a": ir.Num(value=2)})
    assert transform(call, lambda n: n) is call
