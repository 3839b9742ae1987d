"""The canonical form of a method: one IR for every way of writing the same computation.

:func:`canonicalize` is a pure function ``Method -> Method``. Two specs that compute the same
thing canonicalise to equal IR, so identification, comparison and classification never depend
on spelling. What it normalises, and why each step keeps the meaning:

- **arithmetic**: weights, parameters, durations and keyword values become a sum of monomials
  with folded constants, in a fixed order (``alpha * T * T`` = ``T^2 * alpha``; ``9 / 10`` =
  ``0.9``; ``1 - alpha`` = ``-alpha + 1`` printed as ``1 - alpha``);
- **defaults**: a keyword argument equal to the vocabulary default is dropped
  (``softmax(T=1)`` = ``softmax``); keyword arguments are sorted;
- **stop-gradients** are pushed down through parameter-free transforms to the taps
  (``stopgrad(softmax(x))`` = ``softmax(stopgrad(x))``), and dropped over a role that no stage
  trains by gradient (a frozen teacher, a moving average, a snapshot);
- **knowledge pipelines**: a transform both sides of a transfer end with, with equal
  arguments, moves into the shared pipeline (``from softmax(t.logits, T=4) to
  softmax(s.logits, T=4)`` = ``softmax(T=4) from t.logits to s.logits``), unless a side has an
  adapter (adapters size themselves from the other side's value before the pipeline);
- **tap ranges**: ``stage[1..]`` = ``stage[..]`` and ``stage[..-1]`` = ``stage[..]``;
- **let bindings** are inlined where that cannot change what runs: a binding free of learned
  and random functions, or one used once (a binding that a stage trains or freezes by name
  stays, and so does a shared adapter);
- **stages**: a ``losses`` list naming every term is no list; a single stage that sets nothing
  is the implicit stage.

With ``rename=True`` (the *semantic form*) parameters are also inlined by value, the method's
name, title, citations, claims and `use` origins are dropped, and roles, ensembles, data
parts, lets, terms and stages get canonical names chosen from the structure, so that
``semantic_key(a) == semantic_key(b)`` exactly when the two methods are the same computation
up to renaming and reordering.

Written over the generic traversal of :mod:`kdspec.ir.traverse`: node types this module does
not know pass through unchanged.

Example:
    >>> from kdspec.api import load_method
    >>> m = canonicalize(load_method("hinton").method)
    >>> from kdspec.ir.printer import expr_text
    >>> expr_text(m.term("kd").weight)
    'alpha * T^2'
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from typing import Any

from pydantic import BaseModel

from kdspec.ir import models as ir
from kdspec.ir import traverse
from kdspec.ir.traverse import find_all, transform, walk
from kdspec.lru import Lru
from kdspec.vocabulary import FUNCTIONS, REQUIRED

# Functions whose two evaluations differ (a let using one is never duplicated).
_RANDOM = frozenset({"mask"})
# Tie groups of roles and data parts tried in every order when naming (symmetric methods).
_MAX_ORDERINGS = 720
_ARITH = (ir.BinOp, ir.Neg)


# ---------------------------------------------------------------------------------------------
# Small facts
# ---------------------------------------------------------------------------------------------


def _round(v: float) -> float:
    """A folded constant without floating-point noise (``0.1 + 0.2`` = ``0.3``)."""
    if not math.isfinite(v) or v == 0:
        return 0.0 if v == 0 else v
    return float(f"{v:.12g}")


def _pure_call(call: ir.Call) -> bool:
    """A known function without learned parameters or randomness."""
    fn = FUNCTIONS.get(call.func)
    if fn is None or call.func in _RANDOM:
        return False
    return not fn.learned and (fn.category != "adapter" or call.func == "identity")


def _pure(e: BaseModel) -> bool:
    return all(_pure_call(c) for c in find_all(e, ir.Call))


def _has_adapter(e: BaseModel | None) -> bool:
    if e is None:
        return False
    for c in find_all(e, ir.Call):
        fn = FUNCTIONS.get(c.func)
        if fn is None or fn.learned or c.func == "resize":
            return True
        if fn.category == "adapter" and c.func != "identity":
            return True
    return any(isinstance(n, ir.LetRef) for n in walk(e))


def _is_default(func: str, key: str, value: ir.Expr) -> bool:
    fn = FUNCTIONS.get(func)
    param = fn.params.get(key) if fn else None
    if param is None or param.default is REQUIRED or param.default is None:
        return False
    default = param.default
    if isinstance(value, ir.Num) and isinstance(default, int | float):
        return _round(float(default)) == _round(value.value)
    if isinstance(value, ir.Str) and isinstance(default, str):
        return value.value == default
    return False


def _key(node: BaseModel) -> str:
    # Keyword arguments are a mapping: their order never changes the computation.
    return json.dumps(node.model_dump(mode="json"), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Arithmetic: sums of monomials
# ---------------------------------------------------------------------------------------------

Mono = tuple[tuple[str, float], ...]  # (atom key, power), sorted by atom order
Poly = dict[Mono, float]


def _atom_order(e: ir.Expr) -> tuple[int, str, str]:
    """Parameters first (case-insensitively by name), then everything else by its form."""
    if isinstance(e, ir.ParamRef):
        return (0, e.name.lower(), e.name)
    if isinstance(e, ir.LetRef):
        return (1, e.name.lower(), e.name)
    return (2, type(e).__name__, _key(e))


_POLY_OPS = ("+", "-", "*", "/", "^")


def _arith_parts(e: ir.Expr) -> list[ir.Expr]:
    """The operands a polynomial of ``e`` is made from (none for an atom)."""
    if isinstance(e, ir.Neg):
        return [e.operand]
    if isinstance(e, ir.BinOp) and e.op in _POLY_OPS:
        return [e.left, e.right]
    return []


class _Arith:
    """Converts arithmetic to sums of monomials and back; atoms are kept by key."""

    def __init__(self) -> None:
        self.atoms: dict[str, ir.Expr] = {}

    def atom(self, e: ir.Expr) -> Poly:
        k = _key(e)
        self.atoms[k] = e
        return {((k, 1.0),): 1.0}

    def poly(self, e: ir.Expr) -> Poly:
        """``e`` as a sum of monomials (folded bottom-up on an explicit stack)."""
        return traverse.fold(e, _arith_parts, self._poly_of)

    def _poly_of(self, e: ir.Expr, parts: list[Poly]) -> Poly:
        if isinstance(e, ir.Num):
            return {(): e.value} if e.value != 0 else {}
        if isinstance(e, ir.Neg):
            return {m: -c for m, c in parts[0].items()}
        if not isinstance(e, ir.BinOp) or e.op not in _POLY_OPS:
            return self.atom(e)  # a comparison is no polynomial
        a, b = parts
        if e.op == "+":
            return _add(a, b)
        if e.op == "-":
            return _add(a, {m: -c for m, c in b.items()})
        if e.op == "*":
            return _mul(a, b)
        if e.op == "/":
            if len(b) == 1:
                ((mono, coef),) = b.items()
                if coef != 0:
                    inverse = {tuple((k, -p) for k, p in mono): 1.0 / coef}
                    return _mul(a, inverse)
            return self.atom(e)
        # e.op == "^"
        if list(b) == [()] or not b:
            n = b.get((), 0.0)
            if len(a) == 1:
                ((mono, coef),) = a.items()
                if coef > 0 or float(n).is_integer():
                    try:
                        value = coef**n
                    except (OverflowError, ZeroDivisionError):
                        return self.atom(e)
                    return {tuple((k, p * n) for k, p in mono): value}
            if not a:
                return {} if n > 0 else self.atom(e)
            if float(n).is_integer() and 0 <= n <= 4:
                out: Poly = {(): 1.0}
                for _ in range(int(n)):
                    out = _mul(out, a)
                return out
        return self.atom(e)

    def expr(self, p: Poly) -> ir.Expr:
        monos = [(m, _round(c)) for m, c in p.items() if _round(c) != 0]
        if not monos:
            return ir.Num(value=0.0)
        monos.sort(key=lambda mc: (len(mc[0]) > 0, [self._order(k) for k, _ in mc[0]], mc[0]))
        out: ir.Expr | None = None
        for mono, coef in monos:
            if out is None:
                out = self._mono(mono, coef)
            elif coef < 0:
                out = ir.BinOp(op="-", left=out, right=self._mono(mono, -coef))
            else:
                out = ir.BinOp(op="+", left=out, right=self._mono(mono, coef))
        assert out is not None
        return out

    def _order(self, k: str) -> tuple[int, str, str]:
        return _atom_order(self.atoms[k])

    def _mono(self, mono: Mono, coef: float) -> ir.Expr:
        num: list[ir.Expr] = []
        den: list[ir.Expr] = []
        for k, p in mono:
            atom = self.atoms[k]
            power = abs(p)
            factor = atom if power == 1 else ir.BinOp(op="^", left=atom, right=ir.Num(value=power))
            (num if p > 0 else den).append(factor)
        neg = coef < 0
        coef = abs(coef)
        if coef != 1 or not num:
            num.insert(0, ir.Num(value=coef))
        out = num[0]
        for f in num[1:]:
            out = ir.BinOp(op="*", left=out, right=f)
        for f in den:
            out = ir.BinOp(op="/", left=out, right=f)
        return ir.Neg(operand=out) if neg else out


def _add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0.0) + c
    return {m: c for m, c in out.items() if _round(c) != 0}


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for (ma, ca), (mb, cb) in itertools.product(a.items(), b.items()):
        powers: Counter[str] = Counter()
        for k, p in (*ma, *mb):
            powers[k] += p  # type: ignore[assignment]
        mono = tuple(sorted((k, float(p)) for k, p in powers.items() if p != 0))
        out[mono] = out.get(mono, 0.0) + ca * cb
    return {m: c for m, c in out.items() if _round(c) != 0}


def fold(e: ir.Expr) -> ir.Expr:
    """Arithmetic in canonical form (its sub-expressions are taken as they are)."""
    arith = _Arith()
    p = arith.poly(e)
    ordered = {tuple(sorted(m, key=lambda kp: arith._order(kp[0]))): c for m, c in p.items()}
    return arith.expr(ordered)


def power_of(e: ir.Expr, atom: ir.Expr) -> float:
    """The smallest power of ``atom`` over the monomials of ``e`` (0 if one lacks it).

    ``power_of(alpha * T^2 + T^3, T)`` is 2: the weight is ``T^2`` times something.
    """
    arith = _Arith()
    p = arith.poly(e)
    k = _key(atom)
    if not p:
        return 0.0
    return min(dict(mono).get(k, 0.0) for mono in p)


# ---------------------------------------------------------------------------------------------
# Expressions and terms
# ---------------------------------------------------------------------------------------------


def _untrained_roles(m: ir.Method) -> frozenset[str]:
    """Roles no gradient step ever updates: a stop-gradient above their taps changes nothing."""
    named = {n.role for st in m.stages for x in st.train for n in walk(x) if isinstance(n, ir.Tap)}
    out = {r.name for r in m.roles if r.mode != "trained" and r.name not in named}
    for ens in m.ensembles:
        if all(x in out for x in ens.members):
            out.add(ens.name)
    return frozenset(out)


def _stopgrad(e: ir.Expr, untrained: frozenset[str]) -> ir.Expr:
    """``stopgrad(e)``, pushed down through parameter-free transforms."""

    def parts(n: ir.Expr) -> list[ir.Expr]:
        return list(n.args) if isinstance(n, ir.Call) and _pushes_through(n) else []

    def combine(n: ir.Expr, args: list[ir.Expr]) -> ir.Expr:
        if _pushes_through(n):
            return n.model_copy(update={"args": tuple(args)})
        if isinstance(n, ir.Tap) and n.role in untrained:
            return n
        if isinstance(n, ir.Call) and n.func == "stopgrad":
            return n
        if isinstance(n, ir.Num | ir.Str | ir.ParamRef):
            return n
        return ir.Call(func="stopgrad", args=(n,))

    return traverse.fold(e, parts, combine)


def _pushes_through(e: ir.Expr) -> bool:
    """A parameter-free transform: ``stopgrad`` of it is it applied to its stopped arguments."""
    if not isinstance(e, ir.Call) or e.func == "stopgrad" or not e.args:
        return False
    fn = FUNCTIONS.get(e.func)
    return fn is not None and fn.category in ("transform", "combine") and _pure_call(e)


def _pipeline(term: ir.Term) -> ir.Term:
    """Move the transforms both sides end with into the shared knowledge pipeline."""
    if term.kind != "transfer" or term.source is None:
        return term
    if _has_adapter(term.source) or _has_adapter(term.target):
        return term
    src, dst = term.source, term.target
    moved: list[ir.Call] = []
    while (
        isinstance(src, ir.Call)
        and isinstance(dst, ir.Call)
        and src.func == dst.func
        and len(src.args) == len(dst.args) == 1
        and src.kwargs == dst.kwargs
        and FUNCTIONS.get(src.func) is not None
        and FUNCTIONS[src.func].category == "transform"
        and FUNCTIONS[src.func].inputs == 1
        and src.func != "stopgrad"
    ):
        moved.insert(0, ir.Call(func=src.func, kwargs=src.kwargs))
        src, dst = src.args[0], dst.args[0]
    if not moved:
        return term
    return term.model_copy(
        update={"source": src, "target": dst, "knowledge": (*moved, *term.knowledge)}
    )


def _keyword_order(func: str, declared: dict[str, list[str]]) -> Any:
    """Keywords in the order the function declares them (then any others by name): one order
    whatever the spec's, and the one a reader expects (``ramp(start=1, end=8)``)."""
    fn = FUNCTIONS.get(func)
    names = declared.get(func) or (list(fn.params) if fn is not None else [])
    rank = {name: i for i, name in enumerate(names)}
    return lambda k: (rank.get(k, len(rank)), k)


def _expressions(m: ir.Method) -> ir.Method:
    """Every expression of the method in canonical form (one bottom-up pass)."""
    untrained = _untrained_roles(m)
    declared = {f.name: [p.name for p in f.params] for f in m.functions}

    def step(node: BaseModel) -> BaseModel:
        if isinstance(node, _ARITH):
            return fold(node)
        if isinstance(node, ir.Call):
            order = _keyword_order(node.func, declared)
            kwargs = {
                k: node.kwargs[k]
                for k in sorted(node.kwargs, key=order)
                if not _is_default(node.func, k, node.kwargs[k])
            }
            if node.func == "stopgrad" and len(node.args) == 1 and not kwargs:
                return _stopgrad(node.args[0], untrained)
            return node.model_copy(update={"kwargs": kwargs})
        if isinstance(node, ir.Tap) and node.is_range:
            first = None if node.first == 1 else node.first
            last = None if node.last == -1 else node.last
            return node.model_copy(update={"first": first, "last": last})
        if isinstance(node, ir.Term):
            return _pipeline(node)
        return node

    functions = tuple(_canonical_def(f, step) for f in m.functions)
    rest = transform(m.model_copy(update={"functions": ()}), step)
    return rest.model_copy(update={"functions": functions})


# A def's body reads no role and no parameter of a method, so its canonical form is the same in
# every method: the prelude's defs (the same objects in every spec of a process) are
# canonicalised once. The def is kept with its entry, so its id is not another's while it is.
_CANONICAL_DEFS: Lru[int, tuple[ir.FunctionDef, ir.FunctionDef]] = Lru("canonical defs", 256)


def _canonical_def(f: ir.FunctionDef, step: Any) -> ir.FunctionDef:
    hit = _CANONICAL_DEFS.get(id(f))
    if hit is None or hit[0] is not f:
        hit = _CANONICAL_DEFS.put(id(f), (f, transform(f, step)))
    return hit[1]


# ---------------------------------------------------------------------------------------------
# Lets and stages
# ---------------------------------------------------------------------------------------------


def _substitute(node: BaseModel, values: dict[str, ir.Expr], ref: type[BaseModel]) -> Any:
    def step(n: BaseModel) -> BaseModel:
        if isinstance(n, ref) and n.name in values:  # type: ignore[attr-defined]
            return values[n.name]  # type: ignore[attr-defined]
        return n

    return transform(node, step)


def inline_lets(m: ir.Method) -> ir.Method:
    """Inline the ``let`` bindings whose inlining cannot change what runs (see the module)."""
    pinned = {n.name for st in m.stages for n in walk(st) if isinstance(n, ir.LetRef)}
    lets = {x.name: x.value for x in m.lets}
    for _ in range(len(lets) + 1):
        body = [*m.terms, *m.roles, *m.data, *m.predictions.values(), *lets.values()]
        uses = Counter(n.name for b in body for n in walk(b) if isinstance(n, ir.LetRef))
        cands = {
            name
            for name, value in lets.items()
            if name not in pinned and (uses[name] <= 1 or _pure(value))
        }
        # Leaves first: a binding is inlined after the bindings it reads.
        inline = {
            name: value
            for name, value in lets.items()
            if name in cands
            and not any(isinstance(n, ir.LetRef) and n.name in cands for n in walk(value))
        }
        if not inline:
            break
        lets = {
            name: _substitute(value, inline, ir.LetRef)
            for name, value in lets.items()
            if name not in inline
        }
        m = m.model_copy(
            update={
                "terms": tuple(_substitute(t, inline, ir.LetRef) for t in m.terms),
                "roles": tuple(_substitute(r, inline, ir.LetRef) for r in m.roles),
                "data": tuple(_substitute(d, inline, ir.LetRef) for d in m.data),
                "predictions": {
                    r: _substitute(v, inline, ir.LetRef) for r, v in m.predictions.items()
                },
            }
        )
    return m.model_copy(
        update={
            "lets": tuple(
                x.model_copy(update={"value": lets[x.name]}) for x in m.lets if x.name in lets
            )
        }
    )


def _stages(m: ir.Method) -> ir.Method:
    names = {t.name for t in m.terms}
    stages = []
    for st in m.stages:
        losses = tuple(sorted(set(st.losses)))
        if set(losses) == names:
            losses = ()
        stages.append(st.model_copy(update={"losses": losses}))
    if len(stages) == 1:
        only = stages[0]
        if (
            only.duration is None
            and only.repeat is None
            and not only.train
            and not only.freeze
            and not only.losses
            and not only.handoffs
        ):
            stages = []
    return m.model_copy(update={"stages": tuple(stages)})


def _fold_params(m: ir.Method) -> ir.Method:
    def step(node: BaseModel) -> BaseModel:
        return fold(node) if isinstance(node, _ARITH) else node

    return m.model_copy(update={"params": {k: transform(v, step) for k, v in m.params.items()}})


def _inline_params(m: ir.Method) -> ir.Method:
    params = dict(m.params)
    for _ in range(len(params) + 1):
        params = {k: _substitute(v, params, ir.ParamRef) for k, v in params.items()}
    body = m.model_copy(update={"params": {}, "folded_params": ()})
    inlined: ir.Method = _substitute(body, params, ir.ParamRef)
    return inlined


# ---------------------------------------------------------------------------------------------
# Canonical names
# ---------------------------------------------------------------------------------------------


def rename(m: ir.Method, mapping: dict[str, str]) -> ir.Method:
    """The method with roles, ensembles, data parts, lets, terms and stages renamed."""
    if not mapping:
        return m

    def new(name: str | None) -> str | None:
        return None if name is None else mapping.get(name, name)

    def step(node: BaseModel) -> BaseModel:
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
        if isinstance(node, ir.DataPart | ir.Let | ir.LetRef):
            return node.model_copy(update={"name": new(node.name)})
        if isinstance(node, ir.Tap):
            return node.model_copy(update={"role": new(node.role), "view": new(node.view)})
        if isinstance(node, ir.Apply):
            return node.model_copy(update={"role": new(node.role)})
        if isinstance(node, ir.Term):
            return node.model_copy(update={"name": new(node.name), "subset": new(node.subset)})
        if isinstance(node, ir.Method) and node.predictions:
            predictions = {new(r) or r: v for r, v in node.predictions.items()}
            return node.model_copy(update={"predictions": predictions})
        if isinstance(node, ir.Stage):

            def item(x: ir.Expr) -> ir.Expr:
                return ir.Str(value=new(x.value)) if isinstance(x, ir.Str) else x

            return node.model_copy(
                update={
                    "name": new(node.name),
                    "losses": tuple(map(new, node.losses)),
                    "handoffs": tuple((new(a), new(b)) for a, b in node.handoffs),
                    "train": tuple(map(item, node.train)),
                    "freeze": tuple(map(item, node.freeze)),
                }
            )
        return node

    return transform(m, step)


def _term_with(t: ir.Term, mapping: dict[str, str]) -> str:
    """A term's form with names replaced (its own name blanked)."""
    wrapper = ir.Method(name="", terms=(t.model_copy(update={"name": ""}),))
    return _key(rename(wrapper, mapping).terms[0])


def _signatures(m: ir.Method) -> dict[str, tuple[object, ...]]:
    """A name-free signature for each role and data part: what it is and where it is used."""
    names = [r.name for r in m.roles] + [d.name for d in m.data]
    sig: dict[str, tuple[object, ...]] = {}
    for r in m.roles:
        own = r.model_copy(
            update={
                "name": "",
                "source": "?" if r.source else None,
                "like": "?" if r.like else None,
                "init_from": "?" if r.init_from else None,
            }
        )
        sig[r.name] = ("role", r.kind, _key(own), _uses(m, r.name, names))
    for d in m.data:
        sig[d.name] = ("data", d.kind, _blank(d), _uses(m, d.name, names))
    return sig


def _uses(m: ir.Method, name: str, names: list[str]) -> tuple[str, ...]:
    hidden = {n: "?" for n in names if n != name} | {name: "<<me>>"}
    out = [_term_with(t, hidden) for t in m.terms]
    out += [
        _key(
            e.model_copy(update={"name": "", "members": tuple(hidden.get(x, x) for x in e.members)})
        )
        for e in m.ensembles
    ]
    return tuple(sorted(x for x in out if "<<me>>" in x))


def _blank(node: BaseModel) -> str:
    return _key(node.model_copy(update={"name": ""}))


def _rest_names(m: ir.Method, base: dict[str, str]) -> dict[str, str]:
    """Given names for roles and data, names for everything else from its (renamed) form."""
    r = rename(m, base)
    out: dict[str, str] = {}
    out |= {e.name: f"ensemble{i}" for i, e in enumerate(sorted(r.ensembles, key=_blank), 1)}
    # Lets in dependency order: a binding is named once the bindings it reads are, from its
    # form with those names in place (never from the names the spec gave them).
    left = list(r.lets)
    lets: dict[str, str] = {}
    while left:
        ready = [
            x
            for x in left
            if all(n.name in lets for n in walk(x.value) if isinstance(n, ir.LetRef))
        ] or left  # a cycle (rejected by the checks): name what is left by form
        first = min(
            ready, key=lambda x: _blank(rename(ir.Method(name="", lets=(x,)), lets).lets[0])
        )
        lets[first.name] = f"let{len(lets) + 1}"
        left.remove(first)
    out |= lets
    r = rename(r, out)  # terms are ordered by their form with every name above in place
    stage_of = {
        t.name: tuple(i for i, st in enumerate(r.stages) if not st.losses or t.name in st.losses)
        for t in r.terms
    }
    counts: Counter[str] = Counter()
    for t in sorted(r.terms, key=lambda t: (t.kind, _blank(t), stage_of[t.name])):
        counts[t.kind] += 1
        out[t.name] = f"{t.kind}{counts[t.kind]}"
    out |= {st.name: f"stage{i}" for i, st in enumerate(r.stages, 1)}
    # `r` holds the new role and data names; map them back to the original names' keys.
    back = {v: k for k, v in base.items()}
    return {back.get(k, k): v for k, v in out.items()}


def _named(m: ir.Method, mapping: dict[str, str]) -> ir.Method:
    m = rename(m, mapping)
    return m.model_copy(
        update={
            "roles": tuple(sorted(m.roles, key=lambda r: r.name)),
            "ensembles": tuple(sorted(m.ensembles, key=lambda e: e.name)),
            "data": tuple(sorted(m.data, key=lambda d: d.name)),
            "lets": tuple(sorted(m.lets, key=lambda x: x.name)),
            "terms": tuple(sorted(m.terms, key=lambda t: t.name)),
            "stages": tuple(
                st.model_copy(update={"losses": tuple(sorted(st.losses))}) for st in m.stages
            ),
        }
    )


def canonical_names(m: ir.Method) -> dict[str, str]:
    """Canonical names for roles, ensembles, data parts, lets, terms and stages.

    Chosen from the structure alone: a role is named by its kind and its place in an order of
    signatures (what it is, how the terms use it); symmetric roles that the signatures cannot
    tell apart are tried in every order and the smallest resulting form wins.
    """
    sig = _signatures(m)
    groups: dict[tuple[object, ...], list[str]] = {}
    for name, s in sig.items():
        groups.setdefault(s, []).append(name)
    ordered = sorted(groups.items(), key=lambda kv: repr(kv[0]))
    choices = [list(itertools.permutations(names)) for _, names in ordered]
    if math.prod(len(c) for c in choices) > _MAX_ORDERINGS:
        choices = [[tuple(names)] for _, names in ordered]
    best: tuple[str, dict[str, str]] | None = None
    for combo in itertools.product(*choices):
        mapping: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for (s, _), names in zip(ordered, combo, strict=True):
            prefix = str(s[1])
            for n in names:
                counts[prefix] += 1
                mapping[n] = f"{prefix}{counts[prefix]}"
        mapping |= _rest_names(m, mapping)
        form = _key(_named(m, mapping))
        if best is None or form < best[0]:
            best = (form, mapping)
    assert best is not None
    return best[1]


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def canonicalize(method: ir.Method, *, rename: bool = False, values: bool = False) -> ir.Method:
    """The canonical form of a method (see the module docstring); pure.

    Args:
        method: a lowered method.
        rename: also inline parameters, drop names, citations, claims and origins, and give
            every part a canonical name (the semantic form, for equality).
        values: inline parameters by value but keep every name (for comparing by value).
    """
    m = _fold_params(method)
    m = inline_lets(m)
    if rename or values:
        m = _inline_params(m)
    m = _expressions(m)
    m = _stages(m)
    if not rename:
        return m
    m = m.model_copy(
        update={
            "name": "",
            "title": None,
            "cites": (),
            "claims": (),
            "uses": (),
            "terms": tuple(t.model_copy(update={"origin": None}) for t in m.terms),
        }
    )
    return _named(m, canonical_names(m))


def canonical_stages(method: ir.Method) -> tuple[ir.Stage, ...]:
    """The declared stages with their expressions in canonical form, none dropped (for
    comparing stages one by one; :func:`canonicalize` drops a stage that sets nothing)."""
    return _expressions(_fold_params(method)).stages


def semantic_key(method: ir.Method) -> str:
    """A string equal for two methods exactly when their semantic forms are equal."""
    return _key(canonicalize(method, rename=True))


def equivalent(a: ir.Method, b: ir.Method) -> bool:
    """Whether two methods are the same computation up to names, order and spelling."""
    return semantic_key(a) == semantic_key(b)


__all__ = [
    "canonical_names",
    "canonical_stages",
    "canonicalize",
    "equivalent",
    "fold",
    "inline_lets",
    "power_of",
    "rename",
    "semantic_key",
]
