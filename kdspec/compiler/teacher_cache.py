"""The output cache: what frozen roles' taps produce, per training sample, computed once.

A frozen teacher computes the same tapped tensors for a sample every epoch as long as its input
is the same: they are then computed once and read back by the batch's sample indices instead of
running the teacher again. Only roles whose weights never change (``frozen``), on inputs that
are the same every epoch, are cached: deterministic views, or random augmentation that exposes
its parameters (each sample gets a fixed set of ``replays`` augmentation parameters, as in FKD,
and the batch says which one it drew: the cache row is ``index * replays + replay``).

A cache holds one group of tapped tensors (a role, the view it reads, the points a stage taps)
in memory or in **one memory-mapped file** whose name is the hash of everything that determines
the values (:meth:`TeacherCache.key_fields`): the role's weights, the points, the view, the
data's identity and the augmentation's parameters, the storage format. Values are stored as
computed (exact), in float16, or, for logits, as the ``topk`` largest with the rest of the
probability mass spread evenly over the others; the error of a lossy format is measured on
every row written and reported by :meth:`TeacherCache.summary`. Every row of a file carries a
CRC-32, checked when the file is opened: a corrupt file is rebuilt, with a one-line message.

Under data-parallel training the processes share one cache (:meth:`TeacherCache.share`): each
computes the rows of its shard of a batch, and :meth:`TeacherCache.synchronize` (every rank,
at the end of each epoch) hands them over, so every sample's teacher forward runs once over
all ranks. A disk cache is written by rank 0 alone (one file); the other ranks map it after it
was flushed and read only the rows it held then, never a half-written one. A memory cache is
copied to every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kdspec.compiler.hooks import HookPoint

# View functions whose output depends only on the sample (see ``views.make_view``).
DETERMINISTIC_VIEWS = frozenset({None, "clean"})

FORMAT = 1
MAGIC = b"KDSPECTC"
_ALIGN = 64
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
}


@dataclass(frozen=True)
class Peers:
    """The processes of a data-parallel run that share one cache (see ``runtime.distributed``).

    Attributes:
        rank: This process's rank (0 writes a disk cache).
        world: Number of processes.
        all_gather: Every rank's object, in rank order (a collective: every rank calls it).
        gather: Every rank's object on rank 0 (None on the others; a collective).
    """

    rank: int
    world: int
    all_gather: Callable[[Any], list[Any]]
    gather: Callable[[Any], list[Any] | None]


class CacheError(ValueError):
    """The cache cannot hold a value (no sample indices, a non-tensor tap, over its size bound)."""


@dataclass(frozen=True)
class CacheSpec:
    """How an output cache stores its values.

    Attributes:
        store: ``memory`` (this process only) or ``disk`` (one memory-mapped file per cache
            under ``folder``, reused by later runs with the same key).
        dtype: ``fp32`` keeps the teacher's own values (exact); ``fp16`` halves floating
            values (error reported).
        topk: For logits taps: keep only the ``topk`` largest values of the last axis (and
            their indices); the others share the remaining probability mass evenly (0: all).
        max_mb: Refuse a cache larger than this many MiB (None: no bound).
        folder: Where ``disk`` caches live.
        replays: Augmentation parameter sets stored per sample (1: deterministic inputs).
    """

    store: Literal["memory", "disk"] = "memory"
    dtype: Literal["fp32", "fp16"] = "fp32"
    topk: int = 0
    max_mb: float | None = None
    folder: Path | None = None
    replays: int = 1

    def __post_init__(self) -> None:
        if self.store not in ("memory", "disk"):
            raise ValueError(f"unknown cache store `{self.store}` (memory, disk)")
        if self.dtype not in ("fp32", "fp16"):
            raise ValueError(f"unknown cache dtype `{self.dtype}` (fp32, fp16)")
        if self.topk < 0 or self.replays < 1:
            raise ValueError("cache topk must be >= 0 and replays >= 1")
        if self.store == "disk" and self.folder is None:
            raise ValueError("a disk cache needs a folder")

    def fields(self) -> dict[str, Any]:
        """The settings that change stored values (part of the key)."""
        return {"dtype": self.dtype, "topk": self.topk, "replays": self.replays}


@dataclass
class _Field:
    """One stored array: ``rows`` rows of ``shape``, at ``offset`` in a file."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int = 0

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize


@dataclass
class _Error:
    """The largest error of a lossy format seen so far (absolute, relative to the row's
    largest magnitude, and the KL divergence of the dense softmax from the stored one)."""

    abs: float = 0.0
    rel: float = 0.0
    kl: float = 0.0
    kl_sum: float = 0.0  # over the rows (tokens) measured, for the mean
    kl_rows: int = 0

    def add(self, exact: torch.Tensor, stored: torch.Tensor, topk: bool) -> None:
        exact, stored = exact.double(), stored.double()
        if not exact.numel():
            return
        err = (exact - stored).abs().reshape(exact.shape[0], -1)
        self.abs = max(self.abs, float(err.max()))
        scale = exact.abs().reshape(exact.shape[0], -1).amax(dim=1).clamp_min(1e-30)
        self.rel = max(self.rel, float((err.amax(dim=1) / scale).max()))
        if topk:
            p = torch.log_softmax(exact, -1)
            q = torch.log_softmax(stored, -1)
            kl = (p.exp() * (p - q)).sum(-1)
            self.kl = max(self.kl, float(kl.max()))
            self.kl_sum += float(kl.sum())
            self.kl_rows += kl.numel()

    def merge(self, other: _Error) -> None:
        """Take in the error another process measured on its rows."""
        self.abs, self.rel, self.kl = (
            max(self.abs, other.abs),
            max(self.rel, other.rel),
            max(self.kl, other.kl),
        )
        self.kl_sum += other.kl_sum
        self.kl_rows += other.kl_rows


def _encode(point: HookPoint, value: torch.Tensor, spec: CacheSpec) -> dict[str, torch.Tensor]:
    """The arrays one point's batch is stored as."""
    value = value.detach()
    floating = value.is_floating_point()
    out_dtype = torch.float16 if spec.dtype == "fp16" and floating else value.dtype
    k = spec.topk
    if k and point.kind == "logits" and floating and value.dim() >= 2 and k < value.shape[-1]:
        top, idx = value.float().topk(k, dim=-1)
        lse = torch.logsumexp(value.float(), dim=-1)
        kept = torch.exp(top - lse.unsqueeze(-1)).sum(-1)
        rest = (1 - kept).clamp_min(1e-30) / (value.shape[-1] - k)
        return {"v": top.to(out_dtype), "i": idx.to(torch.int32), "f": lse + torch.log(rest)}
    return {"v": value.to(out_dtype)}


def _decode(arrays: dict[str, torch.Tensor], like: tuple[torch.dtype, int]) -> torch.Tensor:
    """A point's values from its stored arrays (``like``: the teacher's dtype, last dim)."""
    dtype, last = like
    if "i" not in arrays:
        return arrays["v"].to(dtype)
    fill = arrays["f"].to(dtype).unsqueeze(-1).expand(*arrays["f"].shape, last)
    return fill.scatter(-1, arrays["i"].long(), arrays["v"].to(dtype))


class _Store:
    """The rows of one cache: every point of a group, in memory or in one mapped file."""

    def __init__(
        self,
        fields: list[_Field],
        rows: int,
        key: str,
        path: Path | None,
        log: Callable[[str], None],
        like: list[list[Any]] | None = None,
        reader: bool = False,
    ) -> None:
        self.fields = {f.name: f for f in fields}
        self.like = like or []
        self.rows = rows
        self.key = key
        self.path = path
        self.row_bytes = sum(f.row_bytes for f in fields)
        self.arrays: dict[str, torch.Tensor] = {}
        self._mm: mmap.mmap | None = None
        self.reused = False
        if path is None:
            self.filled = torch.zeros(rows, dtype=torch.bool)
            for f in fields:
                self.arrays[f.name] = torch.empty((rows, *f.shape), dtype=_DTYPES[f.dtype])
        else:
            self._open(path, fields, log, reader)

    # -- the file ----------------------------------------------------------------------------

    def _header(self, fields: list[_Field]) -> tuple[bytes, int]:
        meta = {"format": FORMAT, "key": self.key, "rows": self.rows, "like": self.like}
        text = json.dumps({**meta, "fields": [asdict(f) for f in fields]}).encode()
        start = _aligned(len(text) + 16)
        return text, start

    def _layout(self, fields: list[_Field]) -> tuple[bytes, int, int]:
        """Header bytes, where the data starts (filled flags, then CRCs, then fields), size."""
        offset, text, start = 0, b"", 0
        for _ in range(2):  # the header's length depends on the offsets it lists
            text, start = self._header(fields)
            offset = _aligned(self._crc_at(start) + 4 * self.rows)  # filled: uint8, crc: int32
            for f in fields:
                f.offset = offset
                offset = _aligned(offset + f.row_bytes * self.rows)
        text, start = self._header(fields)
        return MAGIC + struct.pack("<Q", len(text)) + text, start, offset

    def _open(
        self, path: Path, fields: list[_Field], log: Callable[[str], None], reader: bool
    ) -> None:
        """Map the file (a ``reader`` maps one that rank 0 checked and flushed, as it is)."""
        header, start, size = self._layout(fields)
        if reader:
            problem = "it is missing" if not path.exists() else self._check(path, header, size)
            if problem is not None:
                raise CacheError(
                    f"output cache `{path}`, written by the first process, cannot be read by "
                    f"this one ({problem}): put `[output_cache] folder` on a file system every "
                    "node sees"
                )
        problem = None if reader or not path.exists() else self._check(path, header, size, start)
        self.reused = path.exists() and problem is None
        if problem is not None:
            log(f"output cache `{path}` is corrupt ({problem}): rebuilding it")
            path.unlink()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(header)
                fh.truncate(size)
            os.replace(tmp, path)
        with open(path, "r+b") as fh:
            self._mm = mmap.mmap(fh.fileno(), size)
        self._start = start
        self.filled = torch.frombuffer(self._mm, dtype=torch.bool, count=self.rows, offset=start)
        if reader:  # the rows filled when rank 0 flushed: complete, whatever it writes next
            self.filled = self.filled.clone()
        self.crc = torch.frombuffer(
            self._mm, dtype=torch.int32, count=self.rows, offset=self._crc_at(start)
        )
        for f in fields:
            self.arrays[f.name] = torch.frombuffer(
                self._mm,
                dtype=_DTYPES[f.dtype],
                count=math.prod(f.shape) * self.rows,
                offset=f.offset,
            ).view(self.rows, *f.shape)

    def _check(self, path: Path, header: bytes, size: int, start: int | None = None) -> str | None:
        """Why an existing file cannot be used (None: it can); rows checked from ``start``."""
        if path.stat().st_size != size:
            return f"{path.stat().st_size} bytes where {size} are expected"
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[: len(header)] != header:
                return "its header does not match this cache's layout"
            if start is None:
                return None
            filled = mm[start : start + self.rows]
            at = self._crc_at(start)
            crcs = struct.unpack(f"<{self.rows}i", mm[at : at + 4 * self.rows])
            view = memoryview(mm)
            try:
                for row, flag in enumerate(filled):
                    if flag not in (0, 1):
                        return f"row {row} has a bad flag"
                    if flag and crcs[row] != self._row_crc(view, row):
                        return f"row {row} fails its checksum"
            finally:
                view.release()
        return None

    def _crc_at(self, start: int) -> int:
        """Where the rows' CRCs start (after the filled flags)."""
        return _aligned(start + self.rows)

    def _row_crc(self, view: memoryview, row: int) -> int:
        """CRC-32 of one row's bytes in every field, as a signed 32-bit integer."""
        crc = 0
        for f in self.fields.values():
            a = f.offset + row * f.row_bytes
            crc = zlib.crc32(view[a : a + f.row_bytes], crc)
        return int(struct.unpack("<i", struct.pack("<I", crc))[0])

    # -- rows --------------------------------------------------------------------------------

    def write(self, arrays: dict[str, torch.Tensor], slots: torch.Tensor) -> None:
        slots = slots.cpu().long()
        for name, value in arrays.items():
            self.arrays[name][slots] = value.cpu()
        if self._mm is not None:
            view = memoryview(self._mm)
            try:
                for s in slots.tolist():
                    self.crc[s] = self._row_crc(view, s)
            finally:
                view.release()
        self.filled[slots] = True

    def read(self, slots: torch.Tensor) -> dict[str, torch.Tensor] | None:
        slots = slots.cpu().long()
        if not bool(self.filled[slots].all()):
            return None
        return {name: a[slots] for name, a in self.arrays.items()}

    @property
    def bytes(self) -> int:
        return self.row_bytes * self.rows

    def flush(self) -> None:
        if self._mm is not None:
            self._mm.flush()


@dataclass
class _Rows:
    """Rows one rank computed since the last :meth:`TeacherCache.synchronize`, for the others."""

    group: tuple[str, str | None, tuple[HookPoint, ...]]
    like: dict[HookPoint, tuple[torch.dtype, int]]
    fields: list[_Field]
    key: str  # a disk cache's key and file
    path: Path | None
    slots: torch.Tensor
    arrays: dict[str, torch.Tensor]
    error: _Error


@dataclass
class _Group:
    """One cache: a role, its view, the points one stage taps, and how each point decodes."""

    store: _Store
    points: list[HookPoint]
    like: dict[HookPoint, tuple[torch.dtype, int]]
    error: _Error = field(default_factory=_Error)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Tapped values per ``(role, view, points)`` group, one row per sample (and replay).

    Args:
        num_samples: Training-set size (the sample indices' range).
        spec: Storage settings.
        identity: What determines the inputs besides the sample index (the data's identity,
            the views and augmentation), part of every key; required for a disk cache, whose
            rows must not be read back for other data.
        log: Where one-line messages go (a rebuilt corrupt file).
    """

    def __init__(
        self,
        num_samples: int,
        spec: CacheSpec | None = None,
        identity: dict[str, Any] | None = None,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.num_samples = num_samples
        self.spec = spec or CacheSpec()
        if self.spec.store == "disk" and identity is None:
            raise CacheError("a disk cache needs the data's identity (what the rows are of)")
        self.identity = identity or {}
        self.log = log
        self._groups: dict[tuple[str, str | None, tuple[HookPoint, ...]], _Group] = {}
        self._fingerprints: dict[str, str] = {}
        self.hits = 0
        self.misses = 0
        self.peers: Peers | None = None
        self._pending: list[_Rows] = []  # rows for the other processes of a shared cache

    def clear(self) -> None:
        """Forget every group (a role's weights changed: its fingerprint is taken again)."""
        self.flush()
        self._groups.clear()
        self._fingerprints.clear()
        self._pending.clear()

    def groups(self) -> list[tuple[str, str | None, list[HookPoint]]]:
        """The ``(role, view, points)`` of every group held (what :meth:`lookup` reads)."""
        return [(role, view, list(points)) for role, view, points in self._groups]

    def share(self, peers: Peers) -> None:
        """Share this cache with the other processes of a data-parallel run (see the module's
        docstring); from now on every rank calls :meth:`synchronize` at the same points."""
        self.peers = peers if peers.world > 1 else None

    @property
    def _reader(self) -> bool:
        """Whether this process reads a disk cache that another (rank 0) writes."""
        return self.peers is not None and self.peers.rank != 0 and self.spec.store == "disk"

    def key_fields(
        self, role: str, model: nn.Module, view: Any, points: list[HookPoint]
    ) -> dict[str, Any]:
        """Everything that determines a group's values (hashed into its key)."""
        if role not in self._fingerprints:
            self._fingerprints[role] = weights_fingerprint(model)
        return {
            "format": FORMAT,
            "role": role,
            "weights": self._fingerprints[role],
            "points": [repr(p) for p in points],
            "view": view,
            "samples": self.num_samples,
            "inputs": self.identity,
            "storage": self.spec.fields(),
        }

    def _slots(self, index: torch.Tensor, replay: torch.Tensor | None) -> torch.Tensor:
        r = self.spec.replays
        index = index.cpu().long()
        if r > 1:
            if replay is None:
                raise CacheError(
                    f"the cache stores {r} augmentation replays per sample but the batch does "
                    "not say which one it drew (its fourth element)"
                )
            return index * r + replay.cpu().long()
        return index

    def lookup(
        self,
        role: str,
        view: str | None,
        points: list[HookPoint],
        index: torch.Tensor,
        replay: torch.Tensor | None = None,
        *,
        model: nn.Module | None = None,
        view_ir: Any = None,
    ) -> dict[HookPoint, torch.Tensor] | None:
        """The batch's values if every sample of it is cached for every point, else None.

        ``model`` and ``view_ir`` (the role's weights, its view) find a disk cache written
        by an earlier run before this one has stored anything."""
        group = self._groups.get((role, view, tuple(points)))
        if group is None and self.spec.store == "disk" and model is not None and not self._reader:
            group = self._attach(role, view, points, model, view_ir)
        rows = None if group is None else group.store.read(self._slots(index, replay))
        if group is None or rows is None:
            self.misses += 1
            return None
        self.hits += 1
        device = index.device
        return {
            p: _decode(_of_point(rows, i), group.like[p]).to(device, non_blocking=True)
            for i, p in enumerate(points)
        }

    def store(
        self,
        role: str,
        view: str | None,
        values: dict[HookPoint, Any],
        index: torch.Tensor,
        replay: torch.Tensor | None = None,
        *,
        model: nn.Module | None = None,
        view_ir: Any = None,
    ) -> dict[HookPoint, Any]:
        """Keep one batch's values under its sample indices (and replays).

        Returns the values as they will be read back (a lossy format's, decoded), so that the
        epoch that fills the cache trains on the same teacher as the epochs that read it."""
        n = index.shape[0]
        points = list(values)
        for p, v in values.items():
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n:
                raise CacheError(
                    f"`{p.path or p.kind}` of `{role}` is not one tensor with a row per sample; "
                    "it cannot be cached"
                )
        encoded = {
            f"{i}.{k}": a
            for i, p in enumerate(points)
            for k, a in _encode(p, values[p], self.spec).items()
        }
        key = (role, view, tuple(points))
        group = self._groups.get(key)
        like = {p: (values[p].dtype, int(values[p].shape[-1])) for p in points}
        fields = [
            _Field(k, tuple(a.shape[1:]), str(a.dtype).removeprefix("torch."))
            for k, a in encoded.items()
        ]
        if group is not None:
            like = group.like
            if any(group.store.fields[f.name].shape != f.shape for f in fields):
                raise CacheError(
                    f"the shape of what `{role}` produces changed between batches (sequences "
                    "padded per batch?): a cached value needs the same shape for every sample"
                )
        elif not self._reader:
            group = self._open(role, view, points, like, fields, model, view_ir)
        slots = self._slots(index, replay)
        if group is not None and not self._reader:
            group.store.write(encoded, slots)
        read, error = dict(values), _Error()
        if self.spec.dtype != "fp32" or self.spec.topk:
            for i, p in enumerate(points):
                arrays = _of_point(encoded, i)
                read[p] = _decode(arrays, like[p])
                error.add(values[p].detach(), read[p], "i" in arrays)
            if group is not None:
                group.error.merge(error)
        if self.peers is not None and (self.spec.store == "memory" or self._reader):
            file_key, path = ("", None)
            if self._reader:  # rank 0 writes these rows to the file
                file_key, path = self._path(role, model, view_ir, points)
            self._pending.append(_Rows(key, like, fields, file_key, path, slots, encoded, error))
        return read

    def _path(
        self, role: str, model: nn.Module | None, view_ir: Any, points: list[HookPoint]
    ) -> tuple[str, Path]:
        """A disk cache's key and file."""
        if model is None:
            raise CacheError("a disk cache needs the role's model (its weights are the key)")
        fields_key = self.key_fields(role, model, view_ir, points)
        key = hashlib.sha256(json.dumps(fields_key, sort_keys=True, default=str).encode())
        assert self.spec.folder is not None
        return key.hexdigest(), self.spec.folder / f"{role}-{key.hexdigest()[:20]}.kdcache"

    def _attach(
        self,
        role: str,
        view: str | None,
        points: list[HookPoint],
        model: nn.Module,
        view_ir: Any,
    ) -> _Group | None:
        """The group of an existing file for these points (None: there is none to use)."""
        key, path = self._path(role, model, view_ir, points)
        if not path.exists():
            return None
        meta = _read_header(path)
        problem = None
        if meta is None:
            problem = "its header cannot be read"
        elif meta.get("key") != key or len(meta.get("like", [])) != len(points):
            problem = "its header does not match this cache"
        if problem is not None or meta is None:
            self.log(f"output cache `{path}` is corrupt ({problem}): rebuilding it")
            path.unlink()
            return None
        try:
            fields = [_Field(f["name"], tuple(f["shape"]), f["dtype"]) for f in meta["fields"]]
            like = {
                p: (_DTYPES[d], int(last))
                for p, (d, last) in zip(points, meta["like"], strict=True)
            }
        except (KeyError, TypeError, ValueError):
            self.log(f"output cache `{path}` is corrupt (its header is malformed): rebuilding it")
            path.unlink()
            return None
        return self._open(role, view, points, like, fields, model, view_ir)

    def _open(
        self,
        role: str,
        view: str | None,
        points: list[HookPoint],
        like: dict[HookPoint, tuple[torch.dtype, int]],
        fields: list[_Field],
        model: nn.Module | None,
        view_ir: Any,
    ) -> _Group:
        key, path = "", None
        if self.spec.store == "disk":
            key, path = self._path(role, model, view_ir, points)
        return self._open_group((role, view, tuple(points)), like, fields, key, path)

    def _open_group(
        self,
        group_key: tuple[str, str | None, tuple[HookPoint, ...]],
        like: dict[HookPoint, tuple[torch.dtype, int]],
        fields: list[_Field],
        key: str,
        path: Path | None,
        reader: bool = False,
    ) -> _Group:
        """A group's rows in memory or in the file ``path`` (``key``: what it holds)."""
        rows = self.num_samples * self.spec.replays
        size = rows * sum(f.row_bytes for f in fields)
        bound = self.spec.max_mb
        if bound is not None and size > bound * 2**20:
            raise CacheError(
                f"the output cache of `{group_key[0]}` needs {size / 2**20:,.1f} MiB ({rows:,} "
                f"rows of {sum(f.row_bytes for f in fields):,} bytes), over its bound of "
                f"{bound:g} MiB: raise the bound, or store `fp16` or `topk` values"
            )
        header = [[str(d).removeprefix("torch."), last] for d, last in like.values()]
        store = _Store(fields, rows, key, path, self.log, header, reader)
        group = _Group(store, list(group_key[2]), like)
        sidecar = _sidecar(path)
        if store.reused and sidecar is not None and sidecar.exists():
            # the error measured when the rows were written, by an earlier run
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                group.error = _Error(**json.loads(sidecar.read_text())["error"])
        self._groups[group_key] = group
        return group

    def synchronize(
        self, wanted: Iterable[tuple[str, str | None, list[HookPoint], nn.Module, Any]] = ()
    ) -> None:
        """Hand the rows each process computed since the last call to the others.

        A collective: every rank of a shared cache calls it at the same point (each epoch's
        end, each stage's start). A memory cache gets every other rank's rows. A disk cache
        gets them on rank 0, which flushes its files and then tells the other ranks which to
        map (the message is the barrier: no rank maps a file before rank 0 has flushed it).

        Args:
            wanted: The groups a stage reads, ``(role, view, points, model, view_ir)``: rank 0
                first opens (and checks) the files of earlier runs that hold them.
        """
        if self.spec.store == "disk" and not self._reader:
            for role, view, points, model, view_ir in wanted:
                if (role, view, tuple(points)) not in self._groups:
                    self._attach(role, view, points, model, view_ir)
        peers = self.peers
        if peers is None:
            return
        mine, self._pending = self._pending, []
        if self.spec.store == "memory":
            for r, rows in enumerate(peers.all_gather(mine)):
                for e in rows if r != peers.rank else ():
                    self._write_rows(e)
            return
        listing = None
        got = peers.gather(mine)
        if got is not None:  # rank 0
            for e in (e for rows in got for e in rows):
                self._write_rows(e)
            self.flush()
            listing = [
                (k, g.store.key, g.store.path, g.like, list(g.store.fields.values()))
                for k, g in self._groups.items()
            ]
        listing = peers.all_gather(listing)[0]
        if self._reader:  # map the files again: rows rank 0 added (also on another node)
            self._groups.clear()
            for k, key, path, like, fields in listing:
                self._open_group(k, like, [replace(f) for f in fields], key, path, reader=True)

    def _write_rows(self, rows: _Rows) -> None:
        """Rows another process computed, into this process's store."""
        group = self._groups.get(rows.group)
        if group is None:
            fields = [replace(f) for f in rows.fields]
            group = self._open_group(rows.group, rows.like, fields, rows.key, rows.path)
        group.store.write(rows.arrays, rows.slots)
        group.error.merge(rows.error)

    def summary(self) -> list[str]:
        """One line per cache: rows filled, size, where, and the error of a lossy format."""
        lines = []
        for (role, view, points), g in self._groups.items():
            s = g.store
            what = ", ".join(p.path or p.kind for p in points)
            where = f"in `{s.path}`" if s.path else "in memory"
            line = (
                f"output cache of `{role}`{f'[{view}]' if view else ''} ({what}): "
                f"{int(s.filled.sum()):,}/{s.rows:,} rows, {s.bytes / 2**20:,.2f} MiB {where}, "
                f"{self.spec.dtype}" + (f", top-{self.spec.topk}" if self.spec.topk else "")
            )
            if self.spec.dtype != "fp32" or self.spec.topk:
                e = g.error
                line += f"; error: max abs {e.abs:.2e}, max rel {e.rel:.2e}"
                if self.spec.topk:
                    line += f", max KL(dense || stored) {e.kl:.2e} nats"
                    if e.kl_rows:
                        line += f" (mean {e.kl_sum / e.kl_rows:.2e})"
            lines.append(line + f"; {self.hits} hits, {self.misses} misses")
        return lines

    def flush(self) -> None:
        """Write disk caches' rows to their files (and the error measured, beside them)."""
        if self._reader:
            return
        for g in self._groups.values():
            g.store.flush()
            sidecar = _sidecar(g.store.path)
            if sidecar is not None:
                tmp = sidecar.with_suffix(".json.tmp")
                tmp.write_text(json.dumps({"key": g.store.key, "error": asdict(g.error)}))
                os.replace(tmp, sidecar)


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _read_header(path: Path) -> dict[str, Any] | None:
    """A cache file's header (None: not one)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if len(head) != 16 or head[:8] != MAGIC:
                return None
            (length,) = struct.unpack("<Q", head[8:])
            if length > 1 << 24:
                return None
            meta = json.loads(fh.read(length))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("fields"), list) else None


def _of_point(arrays: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """The arrays of the ``i``-th point of a group (stored as ``"{i}.{name}"``)."""
    return {k.partition(".")[2]: a for k, a in arrays.items() if k.startswith(f"{i}.")}


def _sidecar(path: Path | None) -> Path | None:
    """Beside a cache file: the error its lossy format made when its rows were written."""
    return None if path is None else path.with_suffix(".json")
