"""The syntax tree of a `.kd` file: frozen dataclasses named after the grammar rules.

Every node has a ``span`` that does not take part in equality (``compare=False``), so two trees
parsed from differently laid-out text compare equal exactly when they mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from kdspec.source import Span

_NOSPAN = Span(0, 0)


def _span() -> Span:
    return field(default=_NOSPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Ident:
    """A name as written, with where it was written."""

    name: str
    span: Span = _span()


# ---------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A numeric literal; ``text`` keeps the spelling (``1e-3``) for the formatter."""

    value: float
    text: str = field(default="", compare=False)
    span: Span = _span()


@dataclass(frozen=True)
class String:
    """A string literal (module paths, citations, dictionary keys)."""

    value: str
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    """A bare identifier: a parameter, role, view, let binding or keyword-like constant."""

    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Kwarg:
    """``name = value`` inside a call."""

    name: Ident
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    """``func(args, key=value)``: a knowledge transform, adapter, loss or schedule."""

    func: Ident
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Attr:
    """``obj.name``: a tap point (``s.logits``) or an output field (``output.hidden_states``)."""

    obj: Expr
    name: Ident
    span: Span = _span()


@dataclass(frozen=True)
class ModulePath:
    """``obj."layer3.1.conv2"``: an explicit module path inside a model."""

    obj: Expr
    path: String
    span: Span = _span()


@dataclass(frozen=True)
class Slice:
    """``lo..hi`` (both ends inclusive, either may be omitted)."""

    lo: Expr | None
    hi: Expr | None
    span: Span = _span()


@dataclass(frozen=True)
class Index:
    """``obj[i]``, ``obj[lo..hi]``, ``obj["key"]`` or ``role[view]``."""

    obj: Expr
    index: Expr | Slice
    span: Span = _span()


@dataclass(frozen=True)
class CallIndex:
    """``obj@n``: the n-th call (0-based) of a module that runs more than once per forward."""

    obj: Expr
    n: int
    text: str = field(default="", compare=False)
    span: Span = _span()


@dataclass(frozen=True)
class Apply:
    """``t.classifier(x)``, ``t.stage[-1](x)``, ``t."fc"(x)``: a role's module applied."""

    module: Attr | ModulePath | Index
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class BinOp:
    """``left op right`` with op one of ``+ - * / ^ < > <= >= == !=``."""

    op: str
    left: Expr
    right: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Neg:
    """``-operand``."""

    operand: Expr
    span: Span = _span()


@dataclass(frozen=True)
class ListExpr:
    """``[a, b, c]``."""

    items: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Cond:
    """``if cond then a else b``: a choice made before training (``cond`` is a constant)."""

    cond: Expr
    then: Expr
    orelse: Expr
    span: Span = _span()


Expr = Union[
    Number,
    String,
    Name,
    Call,
    Attr,
    ModulePath,
    Index,
    CallIndex,
    Apply,
    BinOp,
    Neg,
    ListExpr,
    Cond,
]

# ---------------------------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cite:
    """``cite "Hinton et al., arXiv:1503.02531"``."""

    text: String
    span: Span = _span()


@dataclass(frozen=True)
class Param:
    """``param T = 4``: a named parameter, overridable from the command line."""

    name: Ident
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class RoleMod:
    """A role modifier: ``frozen``, ``trained``, ``= ema(s, decay=0.999)``, ``sees view``,
    ``like s`` (the architecture of ``s``; ``like s deeper``: its family, another size) or
    ``from t`` (initialised from the weights of ``t``)."""

    kind: str  # "frozen" | "trained" | "init" | "sees" | "like" | "from"
    init: Call | None = None
    view: Ident | None = None  # the view (sees) or the other role (like, from)
    size: str | None = None  # like: "deeper" | "wider" | "smaller"
    span: Span = _span()


@dataclass(frozen=True)
class Role:
    """``teacher t frozen``, ``peer p1, p2``, ``teacher m = ema(s, decay=0.99)``."""

    kind: str  # teacher | student | assistant | peer
    names: tuple[Ident, ...]
    mods: tuple[RoleMod, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Ensemble:
    """``ensemble ts = mean(t1, t2)``: several roles whose knowledge is combined."""

    name: Ident
    init: Call
    span: Span = _span()


@dataclass(frozen=True)
class View:
    """``view noisy = gaussian_noise(std=0.1)``: a named view (augmentation) of the data."""

    name: Ident
    init: Call | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Subset:
    """``subset labelled = fraction(0.1)``: a named part of the training data."""

    name: Ident
    init: Call | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Let:
    """``let exits = classifier_head(s.stage[1..3])``: a named expression, built once."""

    name: Ident
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Transfer:
    """``transfer [label:] [knowledge] from <teacher expr> to <student expr> with <loss> ...``."""

    label: Ident | None
    knowledge: tuple[Call, ...]
    source: Expr
    target: Expr
    mapping: Call | None
    loss: Call
    weight: Expr | None = None
    on: Ident | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Supervise:
    """``supervise [label:] s.logits with cross_entropy [weight w] [on subset]``."""

    label: Ident | None
    target: Expr
    loss: Call
    weight: Expr | None = None
    on: Ident | None = None
    span: Span = _span()


@dataclass(frozen=True)
class StageItem:
    """One line of a stage body: ``train``, ``freeze``, ``losses`` or ``handoff a -> b``."""

    kind: str  # train | freeze | losses | handoff
    exprs: tuple[Expr, ...] = ()
    names: tuple[Ident, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Stage:
    """``stage hint for 30 epochs { train ...  losses ... }``."""

    name: Ident
    duration: Expr | None = None
    unit: str | None = None  # epochs | steps | %
    repeat: Expr | None = None
    items: tuple[StageItem, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Use:
    """``use hinton(T=4) [as h] [only kd, ce]``: compose another method."""

    method: Ident
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()
    alias: Ident | None = None
    only: tuple[Ident, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Claim:
    """``claim scheme = offline``: what the spec says about its own taxonomy."""

    dimension: Ident
    values: tuple[Ident, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Predict:
    """``predict s = t.classifier(proj)``: what a role predicts when deployed (SimKD)."""

    role: Ident
    value: Expr
    span: Span = _span()


Statement = Union[
    Cite, Param, Role, Ensemble, View, Subset, Let, Transfer, Supervise, Stage, Use, Claim, Predict
]


@dataclass(frozen=True)
class Method:
    """``method name "title" { ... }``."""

    name: Ident
    title: String | None
    body: tuple[Statement, ...]
    span: Span = _span()


@dataclass(frozen=True)
class FunctionParam:
    """A ``def`` parameter: a tensor input (no default) or a keyword parameter."""

    name: Ident
    default: Expr | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Function:
    """``def name(params) = body`` or ``def name(params) { let ... return body }``."""

    name: Ident
    params: tuple[FunctionParam, ...]
    lets: tuple[Let, ...]
    body: Expr
    block: bool = field(default=False, compare=False)  # written with braces
    span: Span = _span()


@dataclass(frozen=True)
class Import:
    """``import "other.kd" [as name]``."""

    path: String
    alias: Ident | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Comment:
    """A ``# ...`` comment; kept beside the tree so the formatter never drops one."""

    text: str
    span: Span = _span()


@dataclass(frozen=True)
class Module:
    """A whole `.kd` file."""

    imports: tuple[Import, ...]
    methods: tuple[Method, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
    span: Span = _span()
    functions: tuple[Function, ...] = ()
