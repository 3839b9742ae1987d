"""Static facts about IR expressions: the kind of knowledge they carry, the roles they read.

Pure functions over the IR and the vocabulary; the graph builder, the passes and the compiler
share them so that a kind is computed in exactly one place.
"""

from __future__ import annotations

from kdspec.ir import models as ir
from kdspec.ir.printer import tap_text
from kdspec.vocabulary import FUNCTIONS


def expr_kind(e: ir.Expr | None, method: ir.Method) -> str:
    """The kind of knowledge an expression yields (see :data:`kdspec.vocabulary.KINDS`)."""
    if e is None:
        return "features"
    if isinstance(e, ir.Tap):
        if e.point == "logits":
            return "logits"
        if e.point == "embedding":
            return "embedding"
        return "features"
    if isinstance(e, ir.LetRef):
        let = method.let(e.name)
        return expr_kind(let.value, method) if let else "features"
    if isinstance(e, ir.Call):
        fn = FUNCTIONS.get(e.func)
        inner = expr_kind(e.args[0], method) if e.args else "features"
        if fn is None:
            return inner
        if fn.category == "schedule":
            return "scalar"
        return inner if fn.returns == "same" else fn.returns
    if isinstance(e, ir.Num | ir.ParamRef | ir.BinOp | ir.Neg):
        return "scalar"
    return "features"


def apply_knowledge(kind: str, knowledge: tuple[ir.Call, ...]) -> str:
    """The kind after a transfer's knowledge pipeline is applied to a side."""
    for call in knowledge:
        fn = FUNCTIONS.get(call.func)
        if fn is not None and fn.returns != "same":
            kind = fn.returns
    return kind


def side_kind(term: ir.Term, side: str, method: ir.Method) -> str:
    """Kind of a term's ``source`` or ``target`` side after its knowledge pipeline."""
    e = term.source if side == "source" else term.target
    return apply_knowledge(expr_kind(e, method), term.knowledge)


def term_sides(term: ir.Term, method: ir.Method) -> list[tuple[str, ir.Expr | None, str]]:
    """A term's sides in order (``source`` first for transfers), each with its kind.

    A transfer's side kind includes its knowledge pipeline; a supervised term has one side,
    its ``target``, read as it is.
    """
    if term.kind == "supervise":
        return [("target", term.target, expr_kind(term.target, method))]
    return [
        (side, getattr(term, side), side_kind(term, side, method)) for side in ("source", "target")
    ]


def taps(
    e: ir.Expr | None, method: ir.Method, *, under_stopgrad: bool = False
) -> list[tuple[ir.Tap, bool]]:
    """Every tap an expression reads (through lets), with whether a ``stopgrad`` sits above it."""
    out: list[tuple[ir.Tap, bool]] = []
    for node in ir.walk(e, method, prune=_is_stopgrad if not under_stopgrad else None):
        if isinstance(node, ir.Tap):
            out.append((node, under_stopgrad))
        elif _is_stopgrad(node) and not under_stopgrad:
            out.extend((tap, True) for tap in node.find_all(ir.Tap, method))
    return out


def _is_stopgrad(e: ir.Expr) -> bool:
    return isinstance(e, ir.Call) and e.func == "stopgrad"


def has_unknown(e: ir.Expr | None, method: ir.Method) -> bool:
    """Whether an expression calls (through lets) a function the vocabulary lacks (KD203)."""
    return any(call.func not in FUNCTIONS for call in ir.find_all(e, ir.Call, method))


def term_has_unknown(term: ir.Term, method: ir.Method) -> bool:
    """Whether a term's sides, pipeline or loss call an unknown function: its kinds are unknown,
    so the type checks skip it rather than report consequences of that one error."""
    parts: tuple[ir.Expr | None, ...] = (term.source, term.target, *term.knowledge, term.loss)
    return any(has_unknown(p, method) for p in parts)


def expand_role(name: str, method: ir.Method) -> tuple[str, ...]:
    """A role name, or an ensemble's member roles."""
    ens = method.ensemble(name)
    return ens.members if ens else (name,)


def roles_read(e: ir.Expr | None, method: ir.Method) -> set[str]:
    """Every role an expression reads from."""
    return {r for tap, _ in taps(e, method) for r in expand_role(tap.role, method)}


def grad_roles(e: ir.Expr | None, method: ir.Method) -> set[str]:
    """Roles that receive gradient through an expression (taps not under ``stopgrad``)."""
    return {r for tap, stop in taps(e, method) if not stop for r in expand_role(tap.role, method)}


def uses_adapter(e: ir.Expr | None, method: ir.Method) -> list[str]:
    """Names of the learned functions (adapters) an expression applies (through lets)."""
    return [
        call.func
        for call in ir.find_all(e, ir.Call, method)
        if call.func != "identity"
        and (fn := FUNCTIONS.get(call.func)) is not None
        and fn.category == "adapter"
    ]


__all__ = [
    "apply_knowledge",
    "expand_role",
    "expr_kind",
    "grad_roles",
    "roles_read",
    "side_kind",
    "tap_text",
    "taps",
    "term_sides",
    "uses_adapter",
]
