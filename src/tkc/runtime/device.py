"""Where a stage's tensors live: the device kind the plan names, the rank's index on it, and moving batches there.

The device comes from the plan (each stage's `device`, which the compiler takes from the hardware profile's
accelerator), never from `torch.cuda.is_available()` alone: `tkc run` checks before any stage starts that the
machine has the devices the bundle names (check_devices), so a cuda bundle on a machine without a GPU is an error,
not a silent CPU run. Every model, batch and optimizer state of a stage goes through stage_device (through the
stage's Strategy: place / batch), and inference (tkc.runtime.infer.hf) uses the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from tkc.bundle.plan import ResolvedPlan, ResolvedStage
from tkc.runtime.dist import DistInfo

KINDS = ("cpu", "cuda", "npu")
# the hardware's accelerator -> torch's device type (ROCm builds of torch answer to "cuda"); for the base model
# outside any stage (tkc chat on the base model), the one place no stage names the device
_TORCH_TYPE = {"cpu": "cpu", "cuda": "cuda", "rocm": "cuda", "npu": "npu"}
# what cuBLAS needs before CUDA starts for deterministic GEMMs (the launch scripts export it: compiler/launch.py)
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


class DeviceUnavailable(RuntimeError):
    """The bundle names a device this machine does not have (or cannot use deterministically)."""


def device_kind(plan: ResolvedPlan, stage: ResolvedStage | None = None) -> str:
    """The stage's device kind: cpu, cuda or npu (its plan's `device`); no stage: the hardware's accelerator."""
    kind = stage.device if stage is not None else _TORCH_TYPE[plan.hardware.accelerator]
    if kind not in KINDS:
        raise DeviceUnavailable(f"stage {stage.name if stage else '(base model)'}: unknown device {kind!r} "
                                f"(known: {', '.join(KINDS)})")
    return kind


def stage_device(plan: ResolvedPlan, stage: ResolvedStage | None, dist: DistInfo) -> torch.device:
    """This rank's device for the stage: cpu, or cuda:<local_rank> / npu:<local_rank>."""
    kind = device_kind(plan, stage)
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device(kind, dist.local_rank)


def _count(kind: str) -> int:
    """How many devices of `kind` this process sees (0: none, or no torch build / plugin for them)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError:
        return 0
    npu = getattr(torch, "npu", None)
    return npu.device_count() if npu is not None and npu.is_available() else 0


def device_problem(kind: str, local_rank: int = 0) -> str | None:
    """Why a process of local rank `local_rank` cannot run on `kind` here, or None."""
    if kind == "cpu":
        return None
    n = _count(kind)
    if n == 0:
        why = ("torch reports no CUDA/ROCm GPU (torch.cuda.is_available() is False"
               f"{'; this torch build has no CUDA' if torch.version.cuda is None and torch.version.hip is None else ''})"
               if kind == "cuda" else "no Ascend NPU is visible (torch_npu missing or torch.npu.is_available() False)")
        return f"this bundle runs on {kind}, but {why}"
    if local_rank >= n:
        return f"local rank {local_rank} needs {kind}:{local_rank}, but only {n} {kind} device(s) are visible"
    return None


def check_devices(plan: ResolvedPlan, stages: Iterable[ResolvedStage], local_rank: int = 0,
                  env: Mapping[str, str] | None = None) -> str | None:
    """Before any stage starts: a message saying why this machine cannot run the stages as planned, or None.

    A stage on cuda or npu needs that device here (never a silent CPU run); a deterministic stage on cuda needs
    CUBLAS_WORKSPACE_CONFIG in the environment before CUDA starts (setting it later has no effect on cuBLAS).
    """
    import os

    env = os.environ if env is None else env
    for st in stages:
        kind = device_kind(plan, st)
        problem = device_problem(kind, local_rank)
        if problem is not None:
            return (f"stage {st.name!r}: {problem}. Run it on a machine with that device, or compile the recipe "
                    f"for this one (e.g. hardware: cpu)")
        if kind == "cuda" and st.train is not None and st.train.deterministic and not env.get(CUBLAS_ENV):
            return (f"stage {st.name!r} is deterministic on cuda, which needs {CUBLAS_ENV} set before CUDA starts; "
                    f"it is not set. Start the run through the bundle's launch script (it exports "
                    f"{CUBLAS_ENV}=:4096:8), export it yourself, or set train.deterministic: false")
    return None


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
