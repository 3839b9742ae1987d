"""IR expressions written back in spec syntax (for explanations, diffs and messages)."""

from __future__ import annotations

from kdspec.ir import models as ir
from kdspec.ir.traverse import Visitor

_PREC = {
    "+": 1,
    "-": 1,
    "*": 2,
    "/": 2,
    "^": 4,
    **dict.fromkeys(("<", ">", "<=", ">=", "==", "!="), 0),
}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def expr_text(e: ir.Expr | None, prec: int = 0) -> str:
    """``beta / 2``, ``softmax(t.logits, T=4)``, ``t.stage[1..3]``."""
    return "" if e is None else _PRINTER.visit(e, prec)


class _Printer(Visitor[str]):
    """Spec text of each kind of expression; ``prec`` is the binding of the context."""

    def visit_Num(self, e: ir.Num, prec: int) -> str:
        return _num(e.value)

    def visit_Str(self, e: ir.Str, prec: int) -> str:
        return e.value

    def visit_ParamRef(self, e: ir.ParamRef, prec: int) -> str:
        return e.name

    def visit_LetRef(self, e: ir.LetRef, prec: int) -> str:
        return e.name

    def visit_ArgRef(self, e: ir.ArgRef, prec: int) -> str:
        return e.name

    def visit_Tap(self, e: ir.Tap, prec: int) -> str:
        return tap_text(e)

    def visit_Call(self, e: ir.Call, prec: int) -> str:
        parts = [self.visit(a, 0) for a in e.args]
        parts += [f"{k}={self.visit(v, 0)}" for k, v in e.kwargs.items()]
        return f"{e.func}({', '.join(parts)})" if parts else e.func

    def visit_Apply(self, e: ir.Apply, prec: int) -> str:
        return f"{module_text(e)}({', '.join(self.visit(a, 0) for a in e.args)})"

    def visit_Neg(self, e: ir.Neg, prec: int) -> str:
        inner = f"-{self.visit(e.operand, 3)}"
        return f"({inner})" if prec > 3 else inner

    def visit_ListE(self, e: ir.ListE, prec: int) -> str:
        return "[" + ", ".join(self.visit(i, 0) for i in e.items) + "]"

    def visit_BinOp(self, e: ir.BinOp, prec: int) -> str:
        p = _PREC[e.op]
        right_assoc = e.op == "^"
        left = self.visit(e.left, p + (1 if right_assoc else 0))
        right = self.visit(e.right, p if right_assoc else p + 1)
        text = f"{left}^{right}" if e.op == "^" else f"{left} {e.op} {right}"
        return f"({text})" if p < prec else text

    def generic_visit(self, node: object, *args: object, **kwargs: object) -> str:
        return "?"


_PRINTER = _Printer()


def module_text(e: ir.Apply) -> str:
    """The module an ``Apply`` runs, in spec syntax: ``t.classifier``, ``t.stage[2]``."""
    if e.point == "stage":
        return f"{e.role}.stage[{e.index}]"
    if e.point == "module":
        return f'{e.role}."{e.module}"'
    return f"{e.role}.{e.point}"


def tap_text(tap: ir.Tap) -> str:
    """A tap written back in spec syntax, e.g. ``t.stage[1..3]`` or ``s[weak].logits``."""
    out = tap.role + (f"[{tap.view}]" if tap.view else "")
    if tap.point == "stage":
        if tap.is_range:
            lo = "" if tap.first is None else str(tap.first)
            hi = "" if tap.last is None else str(tap.last)
            out += f".stage[{lo}..{hi}]"
        else:
            out += f".stage[{tap.first}]"
        if tap.module is not None:
            out += f'."{tap.module}"'
    elif tap.point == "module":
        out += f'."{tap.module}"'
    elif not (tap.point == "output" and not tap.select):
        out += f".{tap.point}"
    if tap.io != "output":
        out += f".{tap.io}"
    if tap.call is not None:
        out += f"@{tap.call}"
    for sel in tap.select:
        out += f"[{sel}]" if isinstance(sel, int) else f".{sel}"
    return out
