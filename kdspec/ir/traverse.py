"""A generic traversal of the IR: children, walk, find_all and transform.

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

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

N = TypeVar("N", bound=BaseModel)


def _nodes_in(value: Any) -> Iterator[BaseModel]:
    if isinstance(value, BaseModel):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _nodes_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _nodes_in(v)


def children(node: BaseModel) -> Iterator[BaseModel]:
    """The IR nodes directly inside ``node``, in field order."""
    for name in type(node).model_fields:
        yield from _nodes_in(getattr(node, name))


def walk(node: BaseModel) -> Iterator[BaseModel]:
    """``node`` and every node inside it, depth first, parents before children."""
    yield node
    for child in children(node):
        yield from walk(child)


def find_all(node: BaseModel, kind: type[N]) -> list[N]:
    """Every node of one class inside ``node`` (``node`` included), in walk order."""
    return [n for n in walk(node) if isinstance(n, kind)]


def map_children(node: N, fn: Callable[[BaseModel], BaseModel]) -> N:
    """``node`` with ``fn`` applied to each direct child (a copy only where one changed)."""
    update: dict[str, Any] = {}
    for name in type(node).model_fields:
        old = getattr(node, name)
        new = _map_direct(old, fn)
        if new is not old and new != old:
            update[name] = new
    return node.model_copy(update=update) if update else node


def _map_direct(value: Any, fn: Callable[[BaseModel], BaseModel]) -> Any:
    if isinstance(value, BaseModel):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_direct(v, fn) for v in value)
    if isinstance(value, list):
        return [_map_direct(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_direct(v, fn) for k, v in value.items()}
    return value


def transform(node: N, fn: Callable[[BaseModel], BaseModel]) -> N:
    """Rebuild ``node`` bottom-up: children first, then ``fn`` on the rebuilt node.

    ``fn`` returns the node to put in its place (itself to keep it). Pure: the input is
    frozen pydantic data and is never changed.
    """
    return fn(map_children(node, lambda child: transform(child, fn)))  # type: ignore[return-value]


__all__ = ["children", "find_all", "map_children", "transform", "walk"]
