"""Multi-process training helpers on top of ``torch.distributed`` (torchrun, DDP).

``torchrun --nproc_per_node=N -m bnnprune train ...`` sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` and the rendezvous variables; :func:`distributed_from_env` joins the process
group (NCCL on CUDA, gloo on CPU). :func:`bnnprune.train.train` then wraps the model in
DistributedDataParallel and gives each rank its shard of every (globally shuffled) batch.
With one process every helper here is a no-op, so single-process code paths stay unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_reduce_sum",
    "average_float_buffers",
    "barrier",
    "distributed_from_env",
    "env_rank",
    "env_world_size",
    "is_distributed",
    "is_main",
    "local_device",
    "main_decides",
    "main_first",
    "rank",
    "shard_bounds",
    "world_size",
    "wrap_ddp",
]

T = TypeVar("T")


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    """``RANK`` as set by torchrun (0 when unset): usable before the group is joined."""
    return int(os.environ.get("RANK", "0") or 0)


def is_distributed() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """In a process group, an index-less ``cuda`` means this process's GPU (``LOCAL_RANK``)."""
    if is_distributed() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return device


@contextlib.contextmanager
def distributed_from_env(device: torch.device) -> Iterator[bool]:
    """Join the process group described by torchrun's environment, if ``WORLD_SIZE > 1``.

    Uses NCCL when ``device`` is CUDA, gloo otherwise; leaves the group on exit. Yields
    whether a group was joined here (an already initialized group is left alone).
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield False
        return
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    dist.init_process_group(backend=backend)
    try:
        yield True
        # every rank is past its last collective before any tears the group down: a rank
        # destroying it while a peer's gloo threads still talk to it aborted that peer at
        # exit ("terminate called without an active exception"); after an error the other
        # ranks may never arrive, so only a clean exit waits
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel inside a process group, else ``model`` itself.

    Buffers are not synchronised on every forward pass (BatchNorm in training mode uses
    batch statistics only); :func:`average_float_buffers` syncs them once per epoch.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    params = inspect.signature(DDP.__init__).parameters
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, **no_sync)


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """Start and stop of rank ``rank_``'s contiguous share of ``n`` items (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (float64; identity with one process)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@torch.no_grad()
def average_float_buffers(model: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over all processes.

    Each rank updates its running statistics from its own shards; averaging them at the end
    of an epoch gives every rank the same model to evaluate and checkpoint.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def main_decides(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result (or its exception) to every rank.

    For decisions that depend on files only rank 0 may see (resume, reuse of a finished
    phase): every rank then acts on the same answer instead of racing on the file system.
    """
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # handed to every rank, re-raised there
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise _from_rank0(value)
    return value


def _from_rank0(error: Exception) -> Exception:
    """Mark an exception that rank 0 raised (and reports) as it reaches another rank."""
    if dist.get_rank() != 0:
        error.reported_by_rank0 = True  # type: ignore[attr-defined]
    return error


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks once it succeeded there.

    For work that must not race (a dataset download into a shared folder); an exception on
    rank 0 is raised on every rank.
    """
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    value: Any = None
    if dist.get_rank() == 0:
        try:
            value = fn()
        except Exception as e:  # handed to every rank, re-raised there
            box[0] = e
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise _from_rank0(box[0])
    return value if dist.get_rank() == 0 else fn()
