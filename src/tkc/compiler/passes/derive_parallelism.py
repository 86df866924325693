"""Pass 6: launcher, world size, and per-stage micro batch / gradient accumulation / padding from the global batch."""

from __future__ import annotations

from typing import Any

from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan

_BACKEND = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl", "npu": "hccl"}
_MICRO_CAP = {"cpu": 4, "npu": 4, "cuda": 4, "rocm": 4}
_ROLLOUT_KINDS = {"ppo", "grpo"}  # they generate and pad their own batches
TOKENS_PER_GB = 128   # activation budget per micro batch: a conservative rule of thumb, not a measurement


def _micro_batch(per_device: int, memory_gb: float, accelerator: str, cutoff_len: int, checkpointing: bool) -> int:
    """The largest power of two dividing the per-device batch, within the device's cap and token budget."""
    budget = int(memory_gb * TOKENS_PER_GB * (4 if checkpointing else 1)) // max(cutoff_len, 1)
    cap = min(_MICRO_CAP[accelerator] * (2 if memory_gb >= 80 else 1), max(budget, 1))
    micro = 1
    while micro * 2 <= min(per_device, cap) and per_device % (micro * 2) == 0:
        micro *= 2
    return micro


def _padding(accelerator: str, kind: str) -> str:
    """CPU: skip padding (each row at its own length; a CPU's throughput does not need wide batches).
    Accelerators: pad to the micro-batch's longest row (wide kernels). ppo/grpo pad their own rollouts."""
    return "unpadded" if accelerator == "cpu" and kind not in _ROLLOUT_KINDS else "longest"


def _launch(plan: Plan) -> dict[str, tuple[Any, str]]:
    spec = plan.inputs.recipe.spec.launch
    kind = spec.kind or plan.get("hardware.default_launch") or "local"
    ksrc = source_of(plan, ("launch", "kind")) if spec.kind else "derived:profile_default_launch"
    distributed = kind != "local"
    nodes = plan.get("hardware.nodes", 1) if distributed else 1
    per_node = plan.get("hardware.devices_per_node", 1) if distributed else 1
    d = "derived:derive_parallelism"
    out: dict[str, tuple[Any, str]] = {
        "launch.kind": (kind, ksrc), "launch.nnodes": (nodes, d), "launch.nproc_per_node": (per_node, d),
        "launch.world_size": (nodes * per_node, d),
        "launch.backend": (_BACKEND[plan.get("hardware.accelerator", "cpu")], d),
    }
    for key in ("master_port", "zero_stage", "offload", "rdzv_timeout_s"):
        out[f"launch.{key}"] = (getattr(spec, key), source_of(plan, ("launch", key)))
    if spec.cpu_threads:  # the recipe's count is per process
        out["launch.cpu_threads"] = (spec.cpu_threads, source_of(plan, ("launch", "cpu_threads")))
    else:  # the profile's count is per node, shared by the processes there
        node = plan.get("hardware.cpu_threads", 1)
        src = f"profile:{plan.get('hardware.profile')}" if per_node == 1 else d
        out["launch.cpu_threads"] = (max(1, node // per_node), src)
    if kind == "deepspeed" and spec.zero_stage is None:
        out["launch.zero_stage"] = (2, d)
    for block in ("slurm", "kubernetes"):
        value = getattr(spec, block)
        dumped = value.model_dump() if value else (None if kind != block else _default_block(block))
        out[f"launch.{block}"] = (dumped, source_of(plan, ("launch", block)) if value else "default")
    return out


def _default_block(block: str) -> dict[str, Any]:
    from tkc.schema.top import KubernetesSpec, SlurmSpec

    return (SlurmSpec() if block == "slurm" else KubernetesSpec()).model_dump()


def derive_parallelism(plan: Plan) -> Plan:
    plan = plan.with_values(_launch(plan))
    world = plan.get("launch.world_size")
    acc = plan.get("hardware.accelerator", "cpu")
    out: dict[str, tuple[Any, str]] = {}
    for i in range(plan.stage_count()):
        p = f"stages.{i}.train."
        if p + "global_batch_size" not in plan.values:
            continue
        gbs = plan.get(p + "global_batch_size")
        per_device = max(gbs // world, 1)
        micro = plan.get(p + "micro_batch_size")
        if micro is None:
            micro = _micro_batch(per_device, plan.get("hardware.memory_gb", 16), acc, plan.get("data.cutoff_len"),
                                 bool(plan.get(p + "gradient_checkpointing")))
            out[p + "micro_batch_size"] = (micro, "derived:derive_parallelism")
        if plan.get(p + "padding") == "auto":
            out[p + "padding"] = (_padding(acc, plan.get(f"stages.{i}.kind")), "derived:derive_parallelism")
        out[p + "world_size"] = (world, "derived:derive_parallelism")
        out[p + "gradient_accumulation_steps"] = (max(per_device // micro, 1), "derived:derive_parallelism")
    return plan.with_values(out)
