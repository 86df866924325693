"""Where a stage's tensors live: the device kind the plan names, the rank's index on it, and moving batches there.

The device comes from the plan (the hardware profile's accelerator), never from `torch.cuda.is_available()`
alone: a cuda bundle on a machine without a GPU is an error, not a silent CPU run.
"""

from __future__ import annotations

from typing import Any

import torch

from tkc.bundle.plan import ResolvedPlan, ResolvedStage
from tkc.runtime.dist import DistInfo

# the plan's accelerator -> torch's device type (ROCm builds of torch answer to "cuda")
_TORCH_TYPE = {"cpu": "cpu", "cuda": "cuda", "rocm": "cuda", "npu": "npu"}


def device_kind(plan: ResolvedPlan, stage: ResolvedStage | None = None) -> str:
    """The plan's device kind for a stage: cpu, cuda or npu (rocm runs as cuda)."""
    return _TORCH_TYPE[plan.hardware.accelerator]


def stage_device(plan: ResolvedPlan, stage: ResolvedStage | None, dist: DistInfo) -> torch.device:
    """This rank's device for the stage: cpu, or cuda:<local_rank> / npu:<local_rank>."""
    kind = device_kind(plan, stage)
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device(kind, dist.local_rank)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (a tensor, or dicts / lists / tuples of them) on `device`; a no-op on the CPU."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
