"""Rewrites of a method's IR for the property tests: ones that keep its meaning (renaming,
reordering, let-introduction, pipeline distribution, equal-value spellings) and single
semantic edits (a loss, a tap, a weight, a role's state, a stage), each with the kind of change
``kdspec diff`` must report.

Every rewrite is written independently of :mod:`kdspec.ir.canonical` (it builds the other
spelling; it does not call the canonicaliser), so a test that the two spellings canonicalise to
the same form checks something.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kdspec.ir import models as ir
from kdspec.ir.traverse import transform, walk
from kdspec.vocabulary import FUNCTIONS

Rewrite = Callable[[ir.Method, random.Random], ir.Method]


def _sides(m: ir.Method) -> list[tuple[int, str]]:
    return [
        (i, side)
        for i, t in enumerate(m.terms)
        for side in ("source", "target")
        if getattr(t, side) is not None
    ]


def _set_term(m: ir.Method, i: int, **update: object) -> ir.Method:
    terms = list(m.terms)
    terms[i] = terms[i].model_copy(update=update)
    return m.model_copy(update={"terms": tuple(terms)})


def _names(m: ir.Method) -> list[str]:
    return [
        *(r.name for r in m.roles),
        *(e.name for e in m.ensembles),
        *(d.name for d in m.data),
        *(x.name for x in m.lets),
        *(t.name for t in m.terms),
        *(s.name for s in m.stages),
    ]


# ---------------------------------------------------------------------------------------------
# Meaning-preserving
# ---------------------------------------------------------------------------------------------


def rename_all(m: ir.Method, rng: random.Random) -> ir.Method:
    """Every role, ensemble, data part, let, term, stage and parameter gets a fresh name."""
    names = _names(m) + list(m.params)
    fresh = [f"n{rng.randrange(10**6)}_{i}" for i in range(len(names))]
    mapping = dict(zip(names, fresh, strict=True))

    def new(x: str | None) -> str | None:
        return None if x is None else mapping.get(x, x)

    def step(node):  # type: ignore[no-untyped-def]
        if isinstance(node, ir.Role):
            return node.model_copy(
                update={
                    "name": new(node.name),
                    "source": new(node.source),
                    "view": new(node.view),
                    "like": new(node.like),
                    "init_from": new(node.init_from),
                }
            )
        if isinstance(node, ir.Ensemble):
            return node.model_copy(
                update={"name": new(node.name), "members": tuple(map(new, node.members))}
            )
        if isinstance(node, ir.DataPart | ir.Let | ir.LetRef | ir.ParamRef):
            return node.model_copy(update={"name": new(node.name)})
        if isinstance(node, ir.Tap):
            return node.model_copy(update={"role": new(node.role), "view": new(node.view)})
        if isinstance(node, ir.Apply):
            return node.model_copy(update={"role": new(node.role)})
        if isinstance(node, ir.Term):
            return node.model_copy(update={"name": new(node.name), "subset": new(node.subset)})
        if isinstance(node, ir.Stage):
            return node.model_copy(
                update={
                    "name": new(node.name),
                    "losses": tuple(map(new, node.losses)),
                    "handoffs": tuple((new(a), new(b)) for a, b in node.handoffs),
                    "train": tuple(
                        ir.Str(value=new(x.value)) if isinstance(x, ir.Str) else x
                        for x in node.train
                    ),
                    "freeze": tuple(
                        ir.Str(value=new(x.value)) if isinstance(x, ir.Str) else x
                        for x in node.freeze
                    ),
                }
            )
        return node

    out = transform(m, step)
    return out.model_copy(
        update={
            "name": "renamed",
            "params": {mapping[k]: v for k, v in out.params.items()},
            "folded_params": tuple(mapping[k] for k in out.folded_params),
            "predictions": {new(r): v for r, v in out.predictions.items()},
        }
    )


def reorder(m: ir.Method, rng: random.Random) -> ir.Method:
    """Roles, ensembles, data parts, lets, terms and parameters in another order."""

    def shuffled(xs: tuple) -> tuple:  # type: ignore[type-arg]
        out = list(xs)
        rng.shuffle(out)
        return tuple(out)

    params = list(m.params.items())
    rng.shuffle(params)
    return m.model_copy(
        update={
            "params": dict(params),
            **{k: shuffled(getattr(m, k)) for k in ("roles", "ensembles", "data", "lets", "terms")},
        }
    )


def introduce_let(m: ir.Method, rng: random.Random) -> ir.Method:
    """A side (or a tap inside it) is bound by a new ``let`` and read through it."""
    sides = _sides(m)
    if not sides:
        return m
    i, side = rng.choice(sides)
    expr = getattr(m.terms[i], side)
    candidates = [n for n in walk(expr) if isinstance(n, ir.Tap | ir.Call)]
    chosen = rng.choice(candidates) if candidates else expr
    name = f"bound{rng.randrange(10**6)}"
    done = False

    def step(node):  # type: ignore[no-untyped-def]
        nonlocal done
        if not done and node == chosen:
            done = True
            return ir.LetRef(name=name)
        return node

    new_side = transform(expr, step)
    out = _set_term(m, i, **{side: new_side})
    return out.model_copy(update={"lets": (*out.lets, ir.Let(name=name, value=chosen))})


def _pure_transform(call: ir.Call) -> bool:
    fn = FUNCTIONS.get(call.func)
    return fn is not None and fn.category == "transform" and not fn.learned


def _has_adapter(e: ir.Expr | None, m: ir.Method) -> bool:
    if e is None:
        return False
    for n in walk(e):
        if isinstance(n, ir.LetRef):
            return True
        if isinstance(n, ir.Call):
            fn = FUNCTIONS.get(n.func)
            if fn is None or fn.learned or n.func == "resize":
                return True
            if fn.category == "adapter" and n.func != "identity":
                return True
    return False


def distribute_pipeline(m: ir.Method, rng: random.Random) -> ir.Method:
    """A transfer's knowledge pipeline written out on each side instead."""
    cands = [
        i
        for i, t in enumerate(m.terms)
        if t.kind == "transfer"
        and t.knowledge
        and all(_pure_transform(k) for k in t.knowledge)
        and not _has_adapter(t.source, m)
        and not _has_adapter(t.target, m)
    ]
    if not cands:
        return m
    i = rng.choice(cands)
    t = m.terms[i]
    src, dst = t.source, t.target
    for k in t.knowledge:
        src = k.model_copy(update={"args": (src,)})
        dst = k.model_copy(update={"args": (dst,)})
    return _set_term(m, i, source=src, target=dst, knowledge=())


def _spell(v: float, rng: random.Random) -> ir.Expr:
    """Another spelling of the number ``v``."""
    choice = rng.randrange(4)
    if choice == 0 and (v * 10) / 10 == v:  # exact spellings only: a rewrite keeps the value
        return ir.BinOp(op="/", left=ir.Num(value=v * 10), right=ir.Num(value=10.0))
    if choice == 1 and (v + 1) - 1 == v:  # (1e-7 + 1) - 1 is not 1e-7 in floating point
        return ir.BinOp(op="-", left=ir.Num(value=v + 1), right=ir.Num(value=1.0))
    if choice == 2:
        return ir.BinOp(op="*", left=ir.Num(value=1.0), right=ir.Num(value=v))
    return ir.Neg(operand=ir.Neg(operand=ir.Num(value=v)))


def respell_values(m: ir.Method, rng: random.Random) -> ir.Method:
    """Numbers written another way (``0.9`` as ``9 / 10``), ``T^2`` as ``T * T``, a weight
    times one, explicit default arguments, ``stage[1..]`` for ``stage[..]``."""

    def step(node):  # type: ignore[no-untyped-def]
        if isinstance(node, ir.Num) and rng.random() < 0.5:
            return _spell(node.value, rng)
        if (
            isinstance(node, ir.BinOp)
            and node.op == "^"
            and node.right == ir.Num(value=2.0)
            and rng.random() < 0.7
        ):
            return ir.BinOp(op="*", left=node.left, right=node.left)
        if isinstance(node, ir.Tap) and node.is_range and rng.random() < 0.7:
            return node.model_copy(
                update={
                    "first": 1 if node.first is None else node.first,
                    "last": -1 if node.last is None else node.last,
                }
            )
        if isinstance(node, ir.Call) and rng.random() < 0.5:
            fn = FUNCTIONS.get(node.func)
            if fn is not None:
                kwargs = dict(node.kwargs)
                for name, p in fn.params.items():
                    if (
                        name not in kwargs
                        and isinstance(p.default, int | float)
                        and not (isinstance(p.default, bool))
                    ):
                        kwargs[name] = ir.Num(value=float(p.default))
                return node.model_copy(update={"kwargs": kwargs})
        return node

    out = transform(m.model_copy(update={"params": {}}), step)
    params = {k: transform(v, step) for k, v in m.params.items()}
    terms = tuple(
        t.model_copy(update={"weight": ir.BinOp(op="*", left=t.weight, right=ir.Num(value=1.0))})
        if rng.random() < 0.5
        else t
        for t in out.terms
    )
    return out.model_copy(update={"params": params, "terms": terms})


def stopgrad_frozen(m: ir.Method, rng: random.Random) -> ir.Method:
    """``stopgrad`` written over a tap of a role no stage trains (it changes nothing)."""
    trained_in_stage = {
        n.role for st in m.stages for x in st.train for n in walk(x) if isinstance(n, ir.Tap)
    }
    frozen = {r.name for r in m.roles if r.mode != "trained" and r.name not in trained_in_stage}
    frozen |= {e.name for e in m.ensembles if set(e.members) <= frozen}

    def step(node):  # type: ignore[no-untyped-def]
        if isinstance(node, ir.Tap) and node.role in frozen and rng.random() < 0.7:
            return ir.Call(func="stopgrad", args=(node,))
        return node

    return m.model_copy(update={"terms": tuple(transform(t, step) for t in m.terms)})


PRESERVING: dict[str, Rewrite] = {
    "rename": rename_all,
    "reorder": reorder,
    "let": introduce_let,
    "pipeline": distribute_pipeline,
    "values": respell_values,
    "stopgrad": stopgrad_frozen,
}


# ---------------------------------------------------------------------------------------------
# Single semantic edits: (rewrite, what diff must name, the field that changes)
# ---------------------------------------------------------------------------------------------

_OTHER_LOSS = {"kl": "soft_ce", "soft_ce": "kl", "mse": "l1", "l1": "mse", "cross_entropy": "kl"}


def edit_loss(m: ir.Method, rng: random.Random) -> tuple[ir.Method, str, str, str] | None:
    cands = [i for i, t in enumerate(m.terms) if t.loss.func in _OTHER_LOSS]
    if not cands:
        return None
    i = rng.choice(cands)
    t = m.terms[i]
    if t.kind == "supervise" and _OTHER_LOSS[t.loss.func] == "kl":
        return None
    loss = ir.Call(func=_OTHER_LOSS[t.loss.func])
    return _set_term(m, i, loss=loss), "term", t.name, "loss"


def edit_tap(m: ir.Method, rng: random.Random) -> tuple[ir.Method, str, str, str] | None:
    cands = []
    for i, t in enumerate(m.terms):
        for side, field in (("source", "from"), ("target", "to")):
            e = getattr(t, side)
            if e is not None and any(
                isinstance(n, ir.Tap) and n.point == "stage" and not n.is_range for n in walk(e)
            ):
                cands.append((i, side, field))
    if not cands:
        return None
    i, side, field = rng.choice(cands)
    done = False

    def step(node):  # type: ignore[no-untyped-def]
        nonlocal done
        if not done and isinstance(node, ir.Tap) and node.point == "stage" and not node.is_range:
            done = True
            first = node.first or 1
            return node.model_copy(update={"first": 2 if first == 1 else first - 1})
        return node

    t = m.terms[i]
    return _set_term(m, i, **{side: transform(getattr(t, side), step)}), "term", t.name, field


def edit_weight(m: ir.Method, rng: random.Random) -> tuple[ir.Method, str, str, str] | None:
    if not m.terms:
        return None
    i = rng.randrange(len(m.terms))
    t = m.terms[i]
    weight = ir.BinOp(op="*", left=ir.Num(value=3.0), right=t.weight)
    return _set_term(m, i, weight=weight), "term", t.name, "weight"


def edit_role_state(m: ir.Method, rng: random.Random) -> tuple[ir.Method, str, str, str] | None:
    cands = [i for i, r in enumerate(m.roles) if r.mode in ("frozen", "trained")]
    if not cands:
        return None
    i = rng.choice(cands)
    roles = list(m.roles)
    r = roles[i]
    roles[i] = r.model_copy(update={"mode": "trained" if r.mode == "frozen" else "frozen"})
    return m.model_copy(update={"roles": tuple(roles)}), "role", r.name, "mode"


def edit_stage(m: ir.Method, rng: random.Random) -> tuple[ir.Method, str, str, str] | None:
    if not m.stages:
        return None
    i = rng.randrange(len(m.stages))
    stages = list(m.stages)
    st = stages[i]
    if st.duration is None:
        new = st.model_copy(update={"duration": ir.Num(value=7.0), "unit": "epochs"})
    else:
        new = st.model_copy(
            update={"duration": ir.BinOp(op="*", left=ir.Num(value=2.0), right=st.duration)}
        )
    stages[i] = new
    return m.model_copy(update={"stages": tuple(stages)}), "stage", st.name, "duration"


EDITS = {
    "loss": edit_loss,
    "tap": edit_tap,
    "weight": edit_weight,
    "role": edit_role_state,
    "stage": edit_stage,
}
