"""User-defined functions in the IR: expanding a call of a ``def`` into its body.

A call of a ``def`` stays a :class:`~kdspec.ir.models.Call` in the IR (so the taxonomy and the
printer see the name the spec wrote); consumers that need the computation (the type checker,
the compiler) expand it here, one level at a time, substituting arguments for parameters.
"""

from __future__ import annotations

from kdspec.ir import models as ir

# Stand-ins for values a call does not write: a pipeline step's input, a loss's two sides.
HOLE = "$hole"
TEACHER_SIDE = "$teacher"
STUDENT_SIDE = "$student"


def substitute(e: ir.Expr, values: dict[str, ir.Expr]) -> ir.Expr:
    """``e`` with every ``ArgRef`` named in ``values`` replaced by its value."""
    return e.transform(lambda n: values.get(n.name, n) if isinstance(n, ir.ArgRef) else n)


def expand(call: ir.Call, fdef: ir.FunctionDef, implicit: tuple[ir.Expr, ...] = ()) -> ir.Expr:
    """The body of ``fdef`` for ``call``: implicit inputs first, then the call's own arguments.

    Keyword parameters the call leaves out take their defaults.
    """
    inputs = [*implicit, *call.args]
    values: dict[str, ir.Expr] = {}
    for name, value in zip(fdef.inputs, inputs, strict=False):
        values[name] = value
    for p in fdef.params:
        if p.default is not None:
            values[p.name] = call.kwargs.get(p.name, p.default)
    return substitute(fdef.body, values)


def calls(e: ir.Expr | None) -> list[str]:
    """Names of every function an expression calls."""
    return [c.func for c in ir.find_all(e, ir.Call)]
