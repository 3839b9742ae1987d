"""One output cache shared by the processes of a data-parallel run (two threads stand in for
two ranks here; tests/runtime/test_distributed.py runs real gloo processes).

A disk cache is written by rank 0 alone: the other rank keeps the rows it computes until
``synchronize`` hands them over, then maps the file and reads only the rows that were filled
when rank 0 flushed it. A memory cache is copied to every rank. Lossy formats report the error
of every rank's rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdspec.compiler.hooks import HookPoint
from kdspec.compiler.teacher_cache import CacheSpec, Peers, TeacherCache

N = 8
LOGITS = HookPoint("logits")
TEACHER = nn.Linear(3, 5)
VALUES = torch.randn(N, 5, generator=torch.Generator().manual_seed(0))


class _Exchange:
    """``all_gather``/``gather`` between threads (each call is a collective, as in gloo)."""

    def __init__(self, world: int) -> None:
        self.world, self.box = world, [None] * world
        self.wait = threading.Barrier(world, timeout=30).wait

    def _all_gather(self, rank: int, obj: Any) -> list[Any]:
        self.box[rank] = obj
        self.wait()
        out = list(self.box)
        self.wait()
        return out

    def peers(self, rank: int) -> Peers:
        def gather(obj: Any) -> list[Any] | None:
            out = self._all_gather(rank, obj)
            return out if rank == 0 else None

        return Peers(rank, self.world, lambda obj: self._all_gather(rank, obj), gather)


def _ranks(store: str, folder: Path, **spec: Any) -> list[TeacherCache]:
    exchange, caches = _Exchange(2), []
    for rank in range(2):
        folder_ = folder if store == "disk" else None
        cache = TeacherCache(N, CacheSpec(store, folder=folder_, **spec), identity={"n": N})  # type: ignore[arg-type]
        cache.share(exchange.peers(rank))
        caches.append(cache)
    return caches


def _both(fn: Callable[[int, TeacherCache], Any], caches: list[TeacherCache]) -> list[Any]:
    with ThreadPoolExecutor(2) as pool:
        return [f.result() for f in [pool.submit(fn, r, c) for r, c in enumerate(caches)]]


def _store(cache: TeacherCache, rows: list[int]) -> None:
    index = torch.tensor(rows)
    cache.store("t", None, {LOGITS: VALUES[index]}, index, model=TEACHER)


def _read(cache: TeacherCache, rows: list[int]) -> torch.Tensor | None:
    found = cache.lookup("t", None, [LOGITS], torch.tensor(rows), model=TEACHER)
    return None if found is None else found[LOGITS]


@pytest.mark.parametrize("store", ["disk", "memory"])
def test_each_rank_computes_its_shard_and_every_rank_then_reads_all_rows(
    tmp_path: Path, store: str
) -> None:
    caches = _ranks(store, tmp_path)
    shards = [[0, 1, 2], [3, 4, 5]]

    def epoch(rank: int, cache: TeacherCache) -> torch.Tensor | None:
        _store(cache, shards[rank])
        cache.synchronize()
        return _read(cache, [0, 1, 2, 3, 4, 5])

    for got in _both(epoch, caches):
        assert got is not None and torch.equal(got, VALUES[:6])
    assert _read(caches[1], [6]) is None  # never computed
    if store == "disk":
        assert [p.suffix for p in sorted(tmp_path.iterdir())] == [".json", ".kdcache"]


def test_the_reader_sees_only_rows_flushed_before_the_last_synchronize(tmp_path: Path) -> None:
    caches = _ranks("disk", tmp_path)

    def first(rank: int, cache: TeacherCache) -> None:
        _store(cache, [[0, 1], [2, 3]][rank])
        cache.synchronize()

    _both(first, caches)
    _store(caches[0], [4, 5])  # rank 0 goes on writing the file it shares
    assert _read(caches[1], [4]) is None  # not handed over yet: never read half-written
    assert _read(caches[1], [0, 3]) is not None

    def second(rank: int, cache: TeacherCache) -> None:
        cache.synchronize()

    _both(second, caches)
    got = _read(caches[1], [4, 5])
    assert got is not None and torch.equal(got, VALUES[4:6])


def test_a_reader_never_writes_the_file_and_its_rows_reach_rank_0(tmp_path: Path) -> None:
    caches = _ranks("disk", tmp_path)
    _store(caches[1], [6, 7])  # rank 1 computes first: rank 0 has no file yet
    assert list(tmp_path.iterdir()) == []  # the reader keeps its rows until synchronize
    _both(lambda rank, cache: cache.synchronize(), caches)
    got = _read(caches[0], [6, 7])
    assert got is not None and torch.equal(got, VALUES[6:8])


def test_the_error_of_a_lossy_format_covers_every_ranks_rows(tmp_path: Path) -> None:
    caches = _ranks("disk", tmp_path, dtype="fp16")
    big = VALUES.clone()
    big[7] *= 1000  # rank 1's row: the largest fp16 rounding error of all

    def epoch(rank: int, cache: TeacherCache) -> None:
        index = torch.tensor([[0, 1], [6, 7]][rank])
        cache.store("t", None, {LOGITS: big[index]}, index, model=TEACHER)
        cache.synchronize()

    _both(epoch, caches)
    worst = float((big[6:8] - big[6:8].half().float()).abs().max())
    (line,) = caches[0].summary()
    assert "4/8 rows" in line
    assert f"max abs {worst:.2e}" in line
