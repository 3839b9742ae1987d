"""IR expressions written back in spec syntax (for explanations, diffs and messages)."""

from __future__ import annotations

from kdspec.ir import models as ir

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
    if e is None:
        return ""
    if isinstance(e, ir.Num):
        return _num(e.value)
    if isinstance(e, ir.Str):
        return e.value
    if isinstance(e, ir.ParamRef | ir.LetRef):
        return e.name
    if isinstance(e, ir.Tap):
        return tap_text(e)
    if isinstance(e, ir.Call):
        parts = [expr_text(a) for a in e.args]
        parts += [f"{k}={expr_text(v)}" for k, v in e.kwargs.items()]
        return f"{e.func}({', '.join(parts)})" if parts else e.func
    if isinstance(e, ir.Apply):
        return f"{module_text(e)}({', '.join(expr_text(a) for a in e.args)})"
    if isinstance(e, ir.Neg):
        inner = f"-{expr_text(e.operand, 3)}"
        return f"({inner})" if prec > 3 else inner
    if isinstance(e, ir.ListE):
        return "[" + ", ".join(expr_text(i) for i in e.items) + "]"
    if isinstance(e, ir.ArgRef):
        return e.name
    if isinstance(e, ir.BinOp):
        p = _PREC[e.op]
        right_assoc = e.op == "^"
        left = expr_text(e.left, p + (1 if right_assoc else 0))
        right = expr_text(e.right, p if right_assoc else p + 1)
        text = f"{left}^{right}" if e.op == "^" else f"{left} {e.op} {right}"
        return f"({text})" if p < prec else text
    return "?"


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
