"""Pass 6: launcher, world size, and per-stage micro batch (the largest the memory estimate fits) / gradient
accumulation / padding from the global batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tkc.compiler.passes._util import source_of
from tkc.compiler.passes.estimate_resources import fits_at, model_shape
from tkc.compiler.plan import Plan

_BACKEND = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl", "npu": "hccl"}
_MICRO_CAP = {"cpu": 4, "npu": 4, "cuda": 4, "rocm": 4}
_ROLLOUT_KINDS = {"ppo", "grpo"}  # they generate and pad their own batches
TOKENS_PER_GB = 128   # without a model shape (no estimate): activation budget per micro batch, a rule of thumb


def _micro_batch(per_device: int, cap: int, fits: Callable[[int], bool]) -> int:
    """The largest power of two dividing the per-device batch, within the device's cap, whose estimate fits
    (1 when none does: the estimate's MEM001 then says what would)."""
    micro = 1
    while micro * 2 <= min(per_device, cap) and per_device % (micro * 2) == 0:
        micro *= 2
    while micro > 1 and not fits(micro):
        micro //= 2
    return micro


def _stage_micro(plan: Plan, i: int, per_device: int) -> int:
    """The estimate decides (compiler/estimate.py); a model of unknown shape gets the tokens-per-GB rule."""
    memory_gb, acc = plan.get("hardware.memory_gb", 16), plan.get("hardware.accelerator", "cpu")
    cap = _MICRO_CAP[acc] * (2 if memory_gb >= 80 else 1)
    shape, _, _ = model_shape(plan)
    if shape is not None:
        return _micro_batch(per_device, cap, lambda micro: fits_at(plan, i, shape, micro))
    checkpointing = bool(plan.get(f"stages.{i}.train.gradient_checkpointing"))
    budget = int(memory_gb * TOKENS_PER_GB * (4 if checkpointing else 1)) // max(plan.get("data.cutoff_len") or 1, 1)
    return _micro_batch(per_device, min(cap, max(budget, 1)), lambda micro: True)


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
            micro = _stage_micro(plan, i, per_device)
            out[p + "micro_batch_size"] = (micro, "derived:derive_parallelism")
        if plan.get(p + "padding") == "auto":
            padding = _padding(acc, plan.get(f"stages.{i}.kind"))
            why = ("(media rows: each run of equal-length rows with its own images, never end to end)"
                   if padding == "unpadded" and plan.get("model.multimodal") is not None else "")
            out[p + "padding"] = (padding, "derived:derive_parallelism" + why)
        out[p + "world_size"] = (world, "derived:derive_parallelism")
        out[p + "gradient_accumulation_steps"] = (max(per_device // micro, 1), "derived:derive_parallelism")
    return plan.with_values(out)
