"""The validated intermediate representation: frozen pydantic v2 models, no spans.

Where each part came from in the source is kept beside the IR in a
:class:`kdspec.ir.lower.SourceMap` keyed by IR paths, so the IR itself compares and serialises
by meaning only. ``Method.model_json_schema()`` is the published JSON Schema of a method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kdspec.ir import traverse
from kdspec.lru import Lru


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_E = TypeVar("_E")


class _ExprNode(_Node):
    """What every expression node shares: the traversal of :mod:`kdspec.ir.traverse` as
    methods, in the manner of sqlglot's ``Expression.walk/find_all/transform``."""

    def children(self) -> tuple[Expr, ...]:
        """The direct sub-expressions, in field order (a call: positional, then keyword)."""
        return tuple(traverse.children(self))  # type: ignore[arg-type]

    def walk(
        self, method: Method | None = None, *, prune: Callable[[Expr], bool] | None = None
    ) -> Iterator[Expr]:
        """Every node, depth first, parents first (see :func:`kdspec.ir.traverse.walk`)."""
        return traverse.walk(self, method, prune=prune)  # type: ignore[return-value]

    def find_all(self, kind: type[_E], method: Method | None = None) -> Iterator[_E]:
        """Every node of class ``kind`` (see :meth:`walk` for ``method``)."""
        return iter(traverse.find_all(self, kind, method))  # type: ignore[type-var]

    def find(self, kind: type[_E], method: Method | None = None) -> _E | None:
        """The first node of class ``kind``, if any."""
        return next(self.find_all(kind, method), None)

    def transform(self, fn: Callable[[Expr], Expr]) -> Expr:
        """A copy rebuilt bottom-up with ``fn`` (see :func:`kdspec.ir.traverse.transform`)."""
        return traverse.transform(self, fn)  # type: ignore[arg-type, return-value]


def walk(
    e: Expr | None, method: Method | None = None, *, prune: Callable[[Expr], bool] | None = None
) -> Iterator[Expr]:
    """:meth:`_ExprNode.walk` of an optional expression (nothing for ``None``)."""
    return iter(()) if e is None else e.walk(method, prune=prune)


def find_all(e: Expr | None, kind: type[_E], method: Method | None = None) -> Iterator[_E]:
    """:meth:`_ExprNode.find_all` of an optional expression (nothing for ``None``)."""
    return iter(()) if e is None else e.find_all(kind, method)


# ---------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------


class Num(_ExprNode):
    """A numeric constant."""

    op: Literal["num"] = "num"
    value: float


class Str(_ExprNode):
    """A string constant (or a bare word used as an enumeration value, e.g. ``spatial``)."""

    op: Literal["str"] = "str"
    value: str


class ParamRef(_ExprNode):
    """A reference to a method parameter, resolved when the method is bound to a run."""

    op: Literal["param"] = "param"
    name: str


class LetRef(_ExprNode):
    """A reference to a ``let`` binding."""

    op: Literal["let"] = "let"
    name: str


class Tap(_ExprNode):
    """Where knowledge is read from one role.

    ``point`` is abstract (``logits``, ``embedding``, ``input`` the model input, ``output`` the
    model's whole output, ``stage`` the k-th stage) or ``module`` (an explicit path); after a
    stage, ``module`` is a path under it (``stage[-1]."attention.self.query"``).
    ``first``/``last`` give a stage index or an inclusive range (negative counts from the end;
    None is open). ``io`` reads the module's output, input or pre-activation. ``call`` picks
    the n-th call of a module run several times per forward. ``select`` picks elements of a
    tuple/dict output (``hidden_states``, 4).
    """

    op: Literal["tap"] = "tap"
    role: str
    view: str | None = None
    point: Literal["logits", "embedding", "input", "output", "stage", "module"]
    module: str | None = None
    first: int | None = None
    last: int | None = None
    is_range: bool = False
    io: Literal["output", "input", "preact"] = "output"
    call: int | None = None
    select: tuple[str | int, ...] = ()


class Call(_ExprNode):
    """A call of a vocabulary function (transform, adapter, combine, schedule)."""

    op: Literal["call"] = "call"
    func: str
    args: tuple[Expr, ...] = ()
    kwargs: dict[str, Expr] = Field(default_factory=dict)


class Apply(_ExprNode):
    """A role's module applied to values as a function: ``t.classifier(x)`` (SimKD reuses the
    teacher's classifier on the student's projected feature), ``t.stage[3](x)``, ``t."fc"(x)``.

    The module keeps its role's weights: the gradient flows into the inputs, and into the
    module only where its role is trained (a frozen teacher's classifier stays as it is).
    ``point``: ``classifier`` (the final classifier, whose input is the ``embedding`` tap),
    ``stage`` (the ``index``-th stage) or ``module`` (a ``named_modules()`` path).
    """

    op: Literal["apply"] = "apply"
    role: str
    point: Literal["classifier", "stage", "module"]
    module: str | None = None
    index: int | None = None
    args: tuple[Expr, ...] = ()


class ArgRef(_ExprNode):
    """A parameter of a ``def`` inside its body, replaced by the argument when it is called."""

    op: Literal["arg"] = "arg"
    name: str


class BinOp(_ExprNode):
    """Arithmetic and comparisons, on numbers (weights) or element-wise on tensors by axis."""

    op: Literal["+", "-", "*", "/", "^", "<", ">", "<=", ">=", "==", "!="]
    left: Expr
    right: Expr


class Neg(_ExprNode):
    """Unary minus."""

    op: Literal["neg"] = "neg"
    operand: Expr


class ListE(_ExprNode):
    """A list of values (e.g. class ids, weights)."""

    op: Literal["list"] = "list"
    items: tuple[Expr, ...] = ()


Expr = Annotated[
    Num | Str | ParamRef | LetRef | ArgRef | Tap | Call | Apply | BinOp | Neg | ListE,
    Field(discriminator="op"),
]

for _model in (Call, Apply, BinOp, Neg, ListE):
    _model.model_rebuild()


class FunctionParam(_Node):
    """A parameter of a ``def``: tensors have no default, keyword parameters have one."""

    name: str
    default: Expr | None = None


class FunctionDef(_Node):
    """A user-defined function: ``def name(params) = body`` (local lets already inlined)."""

    name: str
    params: tuple[FunctionParam, ...] = ()
    body: Expr

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensor parameters (those without a default), in order."""
        return tuple(p.name for p in self.params if p.default is None)


# ---------------------------------------------------------------------------------------------
# Method parts
# ---------------------------------------------------------------------------------------------


class Role(_Node):
    """A participant: who teaches whom.

    ``mode``: ``frozen`` (fixed weights), ``trained`` (updated), ``ema`` (moving average of
    ``source``), ``snapshot`` (frozen copy of ``source``), ``virtual`` (no network: a
    hand-designed distribution). Teachers default to frozen, every other kind to trained.
    """

    name: str
    kind: Literal["teacher", "student", "assistant", "peer"]
    mode: Literal["frozen", "trained", "ema", "snapshot", "virtual"]
    source: str | None = None
    options: dict[str, Expr] = Field(default_factory=dict)
    view: str | None = None
    # Stated architecture and initialisation (``like s``, ``like s deeper``, ``from t``).
    like: str | None = None
    size: Literal["deeper", "wider", "smaller"] | None = None
    init_from: str | None = None


class Ensemble(_Node):
    """Several roles whose knowledge is combined (after each member's transforms)."""

    name: str
    members: tuple[str, ...]
    # An expression like any weight (a list literal, a parameter, schedules inside): evaluated
    # at every step; None is the plain mean.
    weights: Expr | None = None


class DataPart(_Node):
    """A named view (data modification) or subset (data partition), bound by the run."""

    name: str
    kind: Literal["view", "subset"]
    func: str | None = None
    args: tuple[Expr, ...] = ()
    kwargs: dict[str, Expr] = Field(default_factory=dict)


class Let(_Node):
    """A named expression; adapters inside it are built once and shared by its uses."""

    name: str
    value: Expr


class Term(_Node):
    """One loss term: a transfer (teacher side → student side) or supervision by labels."""

    name: str
    kind: Literal["transfer", "supervise"]
    knowledge: tuple[Call, ...] = ()
    source: Expr | None = None
    target: Expr
    mapping: str | None = None
    loss: Call
    weight: Expr = Num(value=1.0)
    subset: str | None = None
    origin: str | None = None  # the `use` it came from, if composed

    def expressions(self) -> tuple[Expr, ...]:
        """Every expression of the term: knowledge calls, sides, loss and weight."""
        sides = (self.target,) if self.source is None else (self.source, self.target)
        return (*self.knowledge, *sides, self.loss, self.weight)


class Stage(_Node):
    """A phase of training; ``losses`` empty means every term, ``train`` empty the defaults."""

    name: str
    duration: Expr | None = None
    unit: Literal["epochs", "steps", "fraction"] | None = None
    repeat: Expr | None = None
    train: tuple[Expr, ...] = ()
    freeze: tuple[Expr, ...] = ()
    losses: tuple[str, ...] = ()
    handoffs: tuple[tuple[str, str], ...] = ()

    def expressions(self) -> tuple[Expr, ...]:
        """Every expression of the stage: duration, repeat, trained and frozen items."""
        bounds = tuple(e for e in (self.duration, self.repeat) if e is not None)
        return (*bounds, *self.train, *self.freeze)


class Claim(_Node):
    """A statement the spec makes about its own taxonomy."""

    dimension: str
    values: tuple[str, ...]


_INDEXES: Lru[int, tuple[tuple[Any, ...], dict[str, Any]]] = Lru("name indexes", 64)


def _by_name(items: tuple[Any, ...]) -> dict[str, Any]:
    """A name -> first item index of a tuple, cached by the tuple's identity: a lookup per term
    stays O(1), so passes that look up every term are linear, not quadratic, in the terms."""
    key = id(items)
    hit = _INDEXES.get(key)
    if hit is not None and hit[0] is items:
        return hit[1]
    index: dict[str, Any] = {}
    for item in items:
        index.setdefault(item.name, item)
    _INDEXES.put(key, (items, index))  # holding the tuple keeps its id from being reused
    return index


class Method(_Node):
    """A whole KD method, architecture-agnostic."""

    name: str
    title: str | None = None
    cites: tuple[str, ...] = ()
    params: dict[str, Expr] = Field(default_factory=dict)
    roles: tuple[Role, ...] = ()
    ensembles: tuple[Ensemble, ...] = ()
    data: tuple[DataPart, ...] = ()
    lets: tuple[Let, ...] = ()
    terms: tuple[Term, ...] = ()
    stages: tuple[Stage, ...] = ()
    claims: tuple[Claim, ...] = ()
    uses: tuple[str, ...] = ()
    folded_params: tuple[str, ...] = ()  # parameters folded into tap indices (`stage[k]`)
    functions: tuple[FunctionDef, ...] = ()  # the `def`s this method calls, directly or not
    # `predict s = expr`: what a role predicts when deployed, in place of its own logits
    predictions: dict[str, Expr] = Field(default_factory=dict)

    def function(self, name: str) -> FunctionDef | None:
        """The ``def`` called ``name``, if the method calls it."""
        return next((f for f in self.functions if f.name == name), None)

    def role(self, name: str) -> Role | None:
        """The role called ``name``, if any."""
        return _by_name(self.roles).get(name)

    def term(self, name: str) -> Term | None:
        """The term called ``name``, if any."""
        return _by_name(self.terms).get(name)

    def let(self, name: str) -> Let | None:
        """The ``let`` binding called ``name``, if any."""
        return _by_name(self.lets).get(name)

    def ensemble(self, name: str) -> Ensemble | None:
        """The ensemble called ``name``, if any."""
        return _by_name(self.ensembles).get(name)

    def expressions(self) -> Iterator[Expr]:
        """Every top-level expression of the method (walk each one for all the nodes)."""
        yield from self.params.values()
        for role in self.roles:
            yield from role.options.values()
        for ens in self.ensembles:
            if ens.weights is not None:
                yield ens.weights
        for part in self.data:
            yield from (*part.args, *part.kwargs.values())
        for let in self.lets:
            yield let.value
        for term in self.terms:
            yield from term.expressions()
        for stage in self.stages:
            yield from stage.expressions()
        yield from self.predictions.values()

    def effective_stages(self) -> tuple[Stage, ...]:
        """The declared stages, or one implicit stage ``main`` running every term."""
        return self.stages or (Stage(name="main"),)
