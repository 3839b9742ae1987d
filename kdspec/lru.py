"""Bounded caches for everything keyed by an input.

A long-lived process sees unboundedly many distinct inputs: `kdspec lsp` re-checks a buffer on
every edit for hours, the fuzz worker checks hundreds of thousands of specs. A cache keyed by
anything derived from an input (a file version, an expression, a spec's parameters) is
therefore an :class:`Lru`: it keeps the ``maxsize`` entries used last, and every one is listed
in :data:`CACHES` so a test can check that each stays within its bound.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

CACHES: weakref.WeakSet[Lru] = weakref.WeakSet()


class Lru(Generic[K, V]):
    """A mapping that keeps the ``maxsize`` entries used (read or written) last."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self.maxsize = maxsize
        self._entries: OrderedDict[K, V] = OrderedDict()
        CACHES.add(self)

    def get(self, key: K) -> V | None:
        """The entry for ``key`` (now the most recently used), or None."""
        try:
            value = self._entries[key]
        except KeyError:
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        """Store ``value`` under ``key``, dropping the least recently used entries beyond
        ``maxsize``; returns ``value``."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return f"Lru({self.name!r}, {len(self)}/{self.maxsize})"
