"""The one traversal of the IR: children, walk, find_all and transform.

Expression nodes offer the same functions as methods (``e.walk(method)``,
``e.find_all(ir.Call)``, ``e.transform(fn)``); every pass, the graph builder, the compiler,
the taxonomy and the lowering's ``use`` inliner go through them instead of a recursion of
their own.

Written over pydantic's field metadata, not over the node classes, so that a node type added
to :mod:`kdspec.ir.models` (a new expression, a new method part) is visited without a change
here. A field may hold a node, a tuple of nodes (or of tuples of nodes), a dict of nodes, or a
plain value; plain values are leaves and are never visited.

Example:
    >>> from kdspec.ir import models as ir
    >>> e = ir.BinOp(op="*", left=ir.ParamRef(name="alpha"), right=ir.Num(value=2))
    >>> [type(n).__name__ for n in walk(e)]
    ['BinOp', 'ParamRef', 'Num']
    >>> double = transform(e, lambda n: ir.Num(value=4) if n == ir.Num(value=2) else n)
    >>> double.right.value
    4.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel

N = TypeVar("N", bound=BaseModel)
R = TypeVar("R")
K = TypeVar("K")


# Plain values: leaves, never visited (checked first: most fields hold one).
_LEAVES = (str, int, float, bool, type(None))


def _nodes_in(value: Any) -> Iterator[BaseModel]:
    if isinstance(value, BaseModel):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            if not isinstance(v, _LEAVES):
                yield from _nodes_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            if not isinstance(v, _LEAVES):
                yield from _nodes_in(v)


_NODE_FIELDS: dict[type, tuple[str, ...]] = {}


def _node_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a node class whose type can hold a node, in field order (a `str` or
    `Literal` field never does: skipping them halves the reads of a walk)."""
    names = _NODE_FIELDS.get(cls)
    if names is None:
        fields = cls.model_fields.items()
        names = _NODE_FIELDS[cls] = tuple(n for n, f in fields if _may_hold(f.annotation))
    return names


def _may_hold(tp: Any) -> bool:
    """Whether a value of type ``tp`` may contain a node (unknown types: yes)."""
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp not in _LEAVES
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return False
    if origin is Annotated:
        return _may_hold(args[0])
    if not args:  # Any, a forward reference, a bare generic: assume it may
        return True
    return any(_may_hold(a) for a in args if a is not Ellipsis)


def children(node: BaseModel) -> Iterator[BaseModel]:
    """The IR nodes directly inside ``node``, in field order."""
    for name in _node_fields(type(node)):
        value = getattr(node, name)
        if isinstance(value, BaseModel):
            yield value
        elif not isinstance(value, _LEAVES):
            yield from _nodes_in(value)


def walk(
    node: BaseModel,
    method: Any = None,
    *,
    prune: Callable[[Any], bool] | None = None,
) -> Iterator[BaseModel]:
    """``node`` and every node inside it, depth first, parents before children.

    Args:
        method: a :class:`~kdspec.ir.models.Method`; when given, a ``let`` reference is
            followed into its binding's value after the reference itself (a binding already
            open on the way down is not entered again, so a cycle ends).
        prune: a node for which it returns true is yielded but its children are not.
    """
    stack: list[tuple[BaseModel, frozenset[str]]] = [(node, frozenset())]
    while stack:
        current, open_lets = stack.pop()
        yield current
        if prune is not None and prune(current):
            continue
        below = [(c, open_lets) for c in children(current)]
        if method is not None and getattr(current, "op", None) == "let":
            name = current.name  # type: ignore[attr-defined]
            let = method.let(name) if name not in open_lets else None
            if let is not None:
                below.append((let.value, open_lets | {name}))
        stack.extend(reversed(below))


def depth(node: BaseModel) -> int:
    """The number of nodes on the longest path down from ``node`` (a leaf is 1), no recursion."""
    deepest = 0
    stack: list[tuple[BaseModel, int]] = [(node, 1)]
    while stack:
        current, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children(current))
    return deepest


def find_all(node: BaseModel, kind: type[N], method: Any = None) -> list[N]:
    """Every node of one class inside ``node`` (``node`` included), in walk order."""
    return [n for n in walk(node, method) if isinstance(n, kind)]


def map_children(node: N, fn: Callable[[BaseModel], BaseModel]) -> N:
    """``node`` with ``fn`` applied to each direct child (a copy only where one changed)."""
    update: dict[str, Any] = {}
    for name in _node_fields(type(node)):
        old = getattr(node, name)
        new = _map_direct(old, fn)
        if new is not old:  # identity, not ==: dict equality ignores a canonical key order
            update[name] = new
    return node.model_copy(update=update) if update else node


def _map_direct(value: Any, fn: Callable[[BaseModel], BaseModel]) -> Any:
    """``value`` with ``fn`` applied to the nodes in it; the same object where none changed."""
    if isinstance(value, BaseModel):
        return fn(value)
    if isinstance(value, tuple | list):
        items = [_map_direct(v, fn) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        mapped = {k: _map_direct(v, fn) for k, v in value.items()}
        return value if all(mapped[k] is v for k, v in value.items()) else mapped
    return value


def transform(node: N, fn: Callable[[BaseModel], BaseModel]) -> N:
    """Rebuild ``node`` bottom-up: children first, then ``fn`` on the rebuilt node.

    ``fn`` returns the node to put in its place (itself to keep it). Pure: the input is
    frozen pydantic data and is never changed.
    """

    def rebuild(n: BaseModel, new_children: list[BaseModel]) -> BaseModel:
        unchanged = zip(new_children, children(n), strict=True)
        if all(a is b for a, b in unchanged):  # no copy of a node nothing below changed
            return fn(n)
        replacements = iter(new_children)  # map_children visits children in children() order
        return fn(map_children(n, lambda _child: next(replacements)))

    root: BaseModel = node
    return fold(root, _child_list, rebuild)  # type: ignore[return-value]


def _child_list(node: BaseModel) -> list[BaseModel]:
    return list(children(node))


def fold(
    root: K,
    parts: Callable[[K], Sequence[K]],
    combine: Callable[[K, list[R]], R],
) -> R:
    """The value of ``root`` computed bottom-up on an explicit stack (no Python recursion).

    ``parts(item)`` lists the items whose values ``item`` needs (called when ``item`` is
    entered); ``combine(item, values)`` makes its value from theirs, in that order. Items are
    entered in the order a recursive evaluator would (each part finished before the next is
    entered), so the first error raised is the same; an item may be a node or a tuple that
    carries context (the evaluator's depth and parameter hops), and a part need not be a child
    (a parameter reference's part is the parameter's value).

    Example:
        >>> from kdspec.ir import models as ir
        >>> e = ir.Neg(operand=ir.BinOp(op="+", left=ir.Num(value=1), right=ir.Num(value=2)))
        >>> def value(n, parts):
        ...     if isinstance(n, ir.Num):
        ...         return n.value
        ...     return -parts[0] if len(parts) == 1 else sum(parts)
        >>> fold(e, lambda n: list(children(n)), value)
        -3.0
    """
    stack: list[tuple[K, Sequence[K], list[R]]] = [(root, parts(root), [])]
    while True:
        item, todo, done = stack[-1]
        if len(done) < len(todo):
            part = todo[len(done)]
            stack.append((part, parts(part), []))
            continue
        value = combine(item, done)
        stack.pop()
        if not stack:
            return value
        stack[-1][2].append(value)


class Visitor(Generic[R]):
    """Folds a node into a value, one method per node class (Jinja's ``NodeVisitor``).

    ``visit(node, ...)`` calls ``visit_<Class>(node, ...)`` for the node's class or its nearest
    base class that has one, else :meth:`generic_visit`; a ``visit_`` method calls
    :meth:`visit` on the children it needs. The printer, the evaluator and the compiler's node
    builder recurse through it rather than through chains of ``isinstance``.

    Example:
        >>> from kdspec.ir import models as ir
        >>> class Count(Visitor[int]):
        ...     def visit_BinOp(self, e): return 1 + self.visit(e.left) + self.visit(e.right)
        ...     def generic_visit(self, e): return 1
        >>> Count().visit(ir.BinOp(op="+", left=ir.Num(value=1), right=ir.Num(value=2)))
        3
    """

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> R:
        """The value of ``node`` (extra arguments are passed to the ``visit_`` method)."""
        for cls in type(node).__mro__:
            method = getattr(self, f"visit_{cls.__name__}", None)
            if method is not None:
                return method(node, *args, **kwargs)  # type: ignore[no-any-return]
        return self.generic_visit(node, *args, **kwargs)

    def generic_visit(self, node: Any, *args: Any, **kwargs: Any) -> R:
        """A node of a class with no ``visit_`` method: an error unless a visitor says more."""
        raise TypeError(f"{type(self).__name__} cannot visit `{type(node).__name__}`")


__all__ = ["Visitor", "children", "depth", "find_all", "fold", "map_children", "transform", "walk"]
