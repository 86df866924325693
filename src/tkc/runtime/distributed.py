"""Process-group helpers: one process, or `torchrun` ranks on CPU (gloo) sharing every global batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "gloo") -> Dist:
    """Join the process group when WORLD_SIZE > 1 (torchrun sets it); gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend if torch.cuda.is_available() else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size())


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_sum(d: Dist, value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity for one process)."""
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(d: Dist, flag: bool) -> bool:
    """True when the flag is set on any rank, so every rank takes the same branch (e.g. SIGTERM)."""
    if not d.enabled:
        return flag
    return bool(all_sum(d, torch.tensor([1.0 if flag else 0.0])).item() > 0)
