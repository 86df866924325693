"""Join the process group torchrun describes in its env vars (gloo on CPU), with a timeout; one process: no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits; rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env(env: dict[str, str] | None = None) -> DistInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun (and deepspeed, accelerate, srun wrappers) set them."""
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE") or 1)
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK") or 0))


def init_distributed(backend: str, timeout_s: float | None = None) -> DistInfo:
    """Init the default process group from env:// (no-op for one process); collectives time out, not hang.

    timeout_s defaults to $TKC_DIST_TIMEOUT_S (the launch scripts export launch.rdzv_timeout_s), else 1800.
    """
    info = dist_info_from_env()
    if not info.enabled:
        return info
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend nccl needs a CUDA/ROCm device; this bundle targets GPUs (use a cpu profile)")
        torch.cuda.set_device(info.local_rank)
    elif backend == "hccl":
        import torch_npu  # noqa: F401  (registers the npu device and the hccl backend)

        torch.npu.set_device(info.local_rank)
    elif backend != "gloo":
        raise ValueError(f"unknown backend {backend!r}: gloo, nccl or hccl")
    seconds = timeout_s if timeout_s is not None else float(os.environ.get("TKC_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size, timeout=timedelta(seconds=seconds))
    return info


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group (after a final barrier would be the caller's choice).

    Garbage is collected first: a DDP wrapper sits in reference cycles and holds the process group; left to
    interpreter shutdown, its gloo worker threads were destroyed still joinable there and the rank died of
    SIGABRT ("terminate called without an active exception") after a finished run.
    """
    if info.enabled:
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
