"""Data-parallel training under ``torchrun``: one process per device, one job.

``torchrun --nproc_per_node=N -m kdspec train SPEC ...`` (or a script of one's own that calls
:func:`setup` and then the API) trains the same job as a single process, faster:

- **The run file means the same thing.** ``[data] batch_size`` is the *global* batch: each of
  the N processes takes a contiguous shard of every batch the single-process loader would have
  drawn (:class:`ShardedBatchSampler`). The permutation comes from the same generator, seeded
  with ``[train] seed`` and advanced once per epoch (so every epoch is reshuffled, identically
  on every rank), so a run's global batches do not depend on N, and a checkpoint's loader
  state resumes under any N. Each rank's loss is weighted by its share of the batch, so the
  averaged gradient is the gradient of the global batch's mean loss, also for a last batch
  that does not split evenly.
- **What is wrapped.** Per stage, the trained roles, adapters and learned parts (everything
  :meth:`~kdspec.compiler.Distiller.trainable_parameters` returns) are synchronised by one
  ``DistributedDataParallel`` over the Distiller; frozen roles are ignored by it (each process
  holds a replica, no gradient or buffer traffic). DDP looks for unused parameters only in a
  stage whose first step leaves some out (:class:`StageParallel`). Batch statistics stay per
  process (use models without batch norm, or larger shards, for exact single-process equality).
- **Who writes.** Rank 0 evaluates, writes ``metrics.jsonl``, checkpoints, ``models/`` and the
  summary; per-epoch losses are averaged over ranks. Teachers without weights are pre-trained
  by rank 0 alone (through the teacher cache) while the others wait, then read from the cache.
- **Resume.** Every rank reads the checkpoint (``--out`` must be on a file system all nodes
  see); each rank's RNG state is saved and restored.

Relation losses over the batch (RKD, CRD's negatives, similarity-preserving) see only each
rank's shard, as in any data-parallel run of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from kdspec.compiler.teacher_cache import Peers

__all__ = [
    "ShardedBatchSampler",
    "StageParallel",
    "all_gather_objects",
    "barrier",
    "broadcast_object",
    "gather_batch",
    "gather_objects",
    "is_main",
    "local",
    "peers",
    "rank",
    "setup",
    "shard_weight",
    "sharded_loader",
    "sum_over_ranks",
    "world_size",
    "wrap",
]

_local_only = False  # `with local():` makes this process train on its own (rank 0's teachers)
_LONG = timedelta(days=1)  # waiting for rank 0 to pre-train a teacher is not a hang
_long_group: Any = None


def setup(device: str | None = None) -> str | None:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ...), once.

    Does nothing outside ``torchrun`` (no ``WORLD_SIZE`` > 1). The backend is NCCL for CUDA
    and gloo otherwise.

    Args:
        device: The requested device (``--device``); None for CUDA when available.

    Returns:
        The device this process trains on: ``cuda:LOCAL_RANK`` for CUDA, else ``device``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    _group()
    return device


def _group() -> Any:
    """A gloo group without the usual timeout (made on first use: every rank calls this)."""
    global _long_group
    if _long_group is None:
        _long_group = dist.new_group(backend="gloo", timeout=_LONG)
    return _long_group


def world_size() -> int:
    """Number of processes training together (1 without a process group or inside :func:`local`)."""
    if _local_only or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def rank() -> int:
    """This process's rank (0 without a process group or inside :func:`local`)."""
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or no process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    return dist.get_rank() == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Train in this process alone (rank 0 pre-training a teacher while the others wait)."""
    global _local_only
    old, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = old


def barrier(long: bool = False) -> None:
    """Wait for every rank (``long``: without the usual 30-minute timeout)."""
    if world_size() > 1:
        dist.barrier(group=_group() if long else None)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_group())  # gloo: CPU objects
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_group())
    return out


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; None on the others."""
    if world_size() <= 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_group())
    return out


def gather_batch(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (its rows of the global batch), concatenated in rank order."""
    world = world_size()
    if world <= 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def peers() -> Peers:
    """This process group as the processes that share one output cache."""
    return Peers(rank(), world_size(), all_gather_objects, gather_objects)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over ranks (every rank holds the same keys)."""
    if world_size() <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=_group())  # a CPU tensor: the gloo group (NCCL has no CPU ops)
    return dict(zip(keys, t.tolist(), strict=True))


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on some rank."""
    if world_size() <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_group())
    return bool(t.item() > 0)


def _shard(n: int, parts: int, k: int) -> tuple[int, int]:
    """Where shard ``k`` of ``n`` items in ``parts`` starts and ends (sizes differ by <= 1)."""
    base, extra = divmod(n, parts)
    start = k * base + min(k, extra)
    return start, start + base + (1 if k < extra else 0)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's contiguous shard of each batch of ``batches`` (a global batch sampler)."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            start, end = _shard(len(batch), self.world, self.rank)
            yield batch[start:end]

    def __len__(self) -> int:
        return len(self.batches)

    def global_size(self, k: int) -> int:
        """Size of the global batch ``k`` (0-based) of an epoch."""
        n, b = len(self.batches.sampler), self.batches.batch_size  # type: ignore[arg-type]
        return min(b, n - k * b)


def sharded_loader(
    dataset: Dataset[Any], batch_size: int, seed: int, num_workers: int = 0
) -> DataLoader[Any]:
    """The training loader of this rank: shards of the single-process loader's batches.

    A last batch smaller than the number of ranks is dropped (a rank would get nothing).
    """
    from kdspec.runtime.data import drops_a_lone_example

    world = world_size()
    gen = torch.Generator().manual_seed(seed)
    n = len(dataset)  # type: ignore[arg-type]
    if batch_size < world:
        raise ValueError(
            f"`[data] batch_size = {batch_size}` is the global batch: it cannot be split over "
            f"{world} processes (give each at least one example)"
        )
    drop = drops_a_lone_example(dataset, batch_size) or 0 < n % batch_size < world
    batches = BatchSampler(RandomSampler(dataset, generator=gen), batch_size, drop)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_sampler=ShardedBatchSampler(batches, rank(), world),
        generator=gen,  # the loader draws its workers' base seed from it, as unsharded
        num_workers=num_workers,
        pin_memory=num_workers > 0 and torch.cuda.is_available(),
    )


def shard_weight(loader: DataLoader[Any], k: int, local: int) -> float:
    """What this rank's mean loss over ``local`` examples of batch ``k`` is multiplied by so
    that averaging gradients over ranks gives the global batch's mean: ``local * N / B``."""
    sampler = loader.batch_sampler
    if not isinstance(sampler, ShardedBatchSampler):
        return 1.0
    return local * sampler.world / sampler.global_size(k)


def wrap(model: Any, params: list[nn.Parameter], device: torch.device) -> Any:
    """``model`` synchronised over ranks for one stage (:class:`StageParallel`), or ``model``.

    Only ``params`` (this stage's trainable set) are synchronised: every other parameter and
    buffer of a role without trainable parameters (frozen teachers) is ignored by DDP, so
    each process keeps its own replica. Call again at every stage (the trainable set changes).
    """
    if world_size() <= 1 or not params:
        return model
    return StageParallel(model, params, device)


class StageParallel:
    """One stage's ``DistributedDataParallel``, with ``find_unused_parameters`` set only when
    the stage really leaves some of its trainable parameters out of the loss.

    Which parameters a loss reaches is only known once a forward has run, so the stage's
    first step is taken without DDP: the loss's autograd graph says which parameters it
    reaches, :meth:`after_backward` averages the gradients over ranks as DDP would, and every
    later step runs through a DDP built with ``find_unused_parameters`` true exactly when some
    rank's first step left a parameter out (a student's classifier in a hint stage, a part of
    a trained role no term reads). A model whose set of used parameters changes from step to
    step (stochastic depth, layer drop) needs ``KDSPEC_DDP_FIND_UNUSED=1``.
    """

    def __init__(self, model: Any, params: list[nn.Parameter], device: torch.device) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.model, self.params, self.device = model, params, device
        self.ddp: Any = None
        self.find_unused: bool | None = None
        self._reached: set[int] | None = None  # the probe step's parameters, until synchronised
        keep = {id(p) for p in params}
        ignored = [n for n, p in model.named_parameters() if id(p) not in keep]
        roles = getattr(model, "roles", None)
        if roles is not None:
            for role, sub in roles.items():
                if not any(id(p) in keep for p in sub.parameters()):
                    ignored += [f"roles.{role}.{n}" for n, _ in sub.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        if os.environ.get("KDSPEC_DDP_FIND_UNUSED", "") not in ("", "0"):
            self.find_unused = True
        _broadcast_from_main([*params, *_synchronised_buffers(model, ignored)])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.ddp is None and self.find_unused is not None:
            from torch.nn.parallel import DistributedDataParallel

            dev = self.device
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[dev.index] if dev.type == "cuda" and dev.index is not None else None,
                find_unused_parameters=self.find_unused,
            )
        if self.ddp is not None:
            return self.ddp(*args, **kwargs)
        out = self.model(*args, **kwargs)
        self._reached = _reached_parameters(out) if torch.is_grad_enabled() else None
        return out

    def after_backward(self) -> None:
        """After the probe step's backward: average its gradients over ranks (DDP's job on
        every later step) and decide ``find_unused_parameters``. Nothing on later steps."""
        if self.ddp is not None or self._reached is None:
            return
        unused = any(id(p) not in self._reached for p in self.params)
        self._reached = None
        _average_gradients(self.params)
        self.find_unused = any_rank(unused)


def _synchronised_buffers(model: nn.Module, ignored: list[str]) -> list[torch.Tensor]:
    skip = set(ignored)
    return [b for n, b in model.named_buffers() if n not in skip]


def _broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every rank (what DDP does when it is built)."""
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                dist.broadcast(t.data, src=0)


def _reached_parameters(out: Any) -> set[int]:
    """The ids of the parameters ``out``'s tensors are computed from (autograd's leaves)."""
    reached: set[int] = set()
    roots, stack = [], [out]
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.grad_fn is not None:
                roots.append(obj.grad_fn)
            elif obj.requires_grad:
                reached.add(id(obj))  # a parameter returned as it is
        elif isinstance(obj, dict):
            stack += obj.values()
        elif isinstance(obj, list | tuple):
            stack += obj
        elif hasattr(obj, "__dataclass_fields__"):
            stack += [getattr(obj, f) for f in obj.__dataclass_fields__]
    seen, todo = set(), roots
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            reached.add(id(var))
        todo += [nxt for nxt, _ in fn.next_functions if nxt is not None]
    return reached


def _average_gradients(params: list[nn.Parameter]) -> None:
    """Each parameter's gradient averaged over ranks, a missing one counting as zero; a
    parameter no rank has a gradient for keeps none (as DDP leaves it)."""
    world = world_size()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(has, group=_group())
    groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
    for p, n in zip(params, has.tolist(), strict=True):
        if n > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    for group in groups.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])  # type: ignore[union-attr]
        dist.all_reduce(flat)
        flat /= world
        at = 0
        for p in group:
            g = p.grad
            assert g is not None
            g.copy_(flat[at : at + g.numel()].view_as(g))
            at += g.numel()
