"""Data-parallel accumulation over processes (torch.distributed, e.g. under torchrun).

When a process group is initialised, every process reads the same ``inputs`` but handles only
the batches whose index ≡ rank (mod world size); sums (G moments, M, E, sample counts) are
all-reduced, so every process ends with the result a single process would compute (exactly, up
to floating-point summation order; random probes are keyed by the global sample index, so
they are the draws of a single process too). Use gloo on CPU and
NCCL on GPU. Without a process group everything here is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Iterable[T]) -> Iterator[T]:
    """This process's share of ``items``: those whose index ≡ rank (mod world size)."""
    rank, world = rank_world()
    for i, item in enumerate(items):
        if i % world == rank:
            yield item


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (in place) and return it."""
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_float(x: float, device: torch.device) -> float:
    return float(all_reduce_sum(torch.tensor([x], dtype=torch.float64, device=device)))


def all_reduce_max(x: int, device: torch.device) -> int:
    t = torch.tensor([x], dtype=torch.int64, device=device)
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)
