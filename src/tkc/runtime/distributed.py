"""Collectives the training loop needs (sum, any-rank flag, barrier); identity for one process. Joining: tkc.runtime.dist."""

from __future__ import annotations

import torch
import torch.distributed as dist

from tkc.runtime.dist import DistInfo


def barrier(d: DistInfo) -> None:
    if d.enabled:
        dist.barrier()


def all_sum(d: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity for one process)."""
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(d: DistInfo, flag: bool) -> bool:
    """True when the flag is set on any rank, so every rank takes the same branch (e.g. SIGTERM)."""
    if not d.enabled:
        return flag
    return bool(all_sum(d, torch.tensor([1.0 if flag else 0.0])).item() > 0)


def broadcast_object(d: DistInfo, obj: object) -> object:
    """Rank 0's picklable object on every rank (identity for one process)."""
    if not d.enabled:
        return obj
    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
