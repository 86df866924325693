"""Pass: each training stage's per-device memory and step time estimate (compiler/estimate.py) into resolved.json.

The model's shape comes from its local config.json, else from the catalog's model_shapes.yaml for a hub id; a model
neither knows gets `estimate.missing` saying why (not an error). derive_parallelism uses the same setup to pick the
micro batch, before precision and LoRA targets are resolved, so `stage_setup` resolves those the same way here.
"""

from __future__ import annotations

from typing import Any

from tkc.catalog.registry import families, profiles
from tkc.catalog.shapes import model_shapes
from tkc.compiler import estimate as est
from tkc.compiler.passes.derive_precision import best_precision
from tkc.compiler.plan import Plan
from tkc.schema.stages import TRAINING_KINDS

D = "derived:estimate_resources"


def model_shape(plan: Plan) -> tuple[est.ModelShape | None, str, str | None]:
    """(shape, basis, why there is none): the local config.json, else the catalog's entry for the hub id."""
    facts = plan.inputs.model
    if facts.config is not None:
        shape, why = est.shape_from_config(facts.config)
        return shape, "model config.json", why
    known = model_shapes().get(facts.path)
    if known is None:
        return None, "none", (f"no config.json for {facts.path!r} and no entry for it in the catalog's "
                              "model_shapes.yaml")
    shape, why = est.shape_from_config(known)
    return shape, "catalog:model_shapes", why


def sharding(plan: Plan) -> int:
    """0: every device holds everything (local, DDP); 1-3: the ZeRO stage; FSDP shards fully (3)."""
    kind = plan.get("launch.kind")
    if kind == "fsdp":
        return 3
    return int(plan.get("launch.zero_stage") or 0) if kind == "deepspeed" else 0


def _engine(plan: Plan) -> str:
    kind = plan.get("launch.kind")
    return kind if kind in ("deepspeed", "fsdp") else "torch"


def _lora_targets(plan: Plan, i: int) -> tuple[str, ...]:
    targets = plan.get(f"stages.{i}.finetuning.lora.targets", "auto")
    if targets in ("auto", "all"):  # as plan_stages resolves them
        fam = families().get(plan.get("model.family") or "")
        return tuple(fam.lora_targets) if fam else ("q_proj", "v_proj")
    return tuple(targets or ())


def stage_setup(plan: Plan, i: int, micro: int | None = None) -> est.Setup:
    """The estimate's view of stage i; `micro` overrides the plan's micro batch (derive_parallelism tries some)."""
    t, ft = f"stages.{i}.train.", f"stages.{i}.finetuning."
    acc = plan.get("hardware.accelerator", "cpu")
    precision = plan.get(t + "precision", "auto")
    if precision == "auto":
        precision = best_precision(acc, bool(plan.get("hardware.supports_bf16")),
                                   bool(plan.get("hardware.supports_fp16")))
    micro = micro or plan.get(t + "micro_batch_size") or 1
    world = int(plan.get("launch.world_size") or 1)
    return est.Setup(
        kind=plan.get(f"stages.{i}.kind"), method=plan.get(ft + "method", "full"), precision=precision,
        micro=micro, cutoff=int(plan.get("data.cutoff_len") or 1),
        accelerator=acc, world=world, sharding=sharding(plan), engine=_engine(plan),
        offload=bool(plan.get("launch.offload")), checkpointing=bool(plan.get(t + "gradient_checkpointing")),
        bits=int(plan.get(ft + "quantization.bits") or 0), lora_rank=int(plan.get(ft + "lora.rank") or 8),
        lora_targets=_lora_targets(plan, i), lora_full_modules=tuple(plan.get(ft + "lora.modules_to_save") or ()),
        trainable_layers=int(plan.get(ft + "freeze.trainable_layers") or 2),
        accumulation=max(1, int(plan.get(t + "global_batch_size") or 1) // world // micro))


def fits_at(plan: Plan, i: int, shape: est.ModelShape, micro: int) -> bool:
    memory = est.estimate_memory(shape, stage_setup(plan, i, micro))
    return est.fits(memory, float(plan.get("hardware.memory_gb", 16)), int(plan.get("launch.nproc_per_node") or 1),
                    plan.get("hardware.accelerator", "cpu"))


def memory_tree(plan: Plan, memory: est.Memory) -> dict[str, Any]:
    per_node, acc = int(plan.get("launch.nproc_per_node") or 1), plan.get("hardware.accelerator", "cpu")
    available = est.available_bytes(float(plan.get("hardware.memory_gb", 16)))
    needed = est.needed_bytes(memory, per_node, acc)
    return {"weights_bytes": memory.weights, "gradients_bytes": memory.gradients,
            "optimizer_bytes": memory.optimizer, "activations_bytes": memory.activations,
            "buffers_bytes": memory.buffers, "overhead_bytes": memory.overhead, "total_bytes": memory.total,
            "offloaded_bytes": memory.offloaded, "needed_bytes": needed, "available_bytes": available,
            "fits": needed <= available}


def _time_tree(plan: Plan, i: int, shape: est.ModelShape, setup: est.Setup) -> tuple[dict[str, Any] | None, str | None]:
    prof = profiles().get(plan.get("hardware.profile") or "")
    peak = prof.peak_tflops.get(setup.precision) if prof else None
    if peak is None:
        where = f"profile {prof.id!r}" if prof else "an inline hardware description"
        return None, f"no peak_tflops for {setup.precision} in {where}: no time estimate"
    eff = est.EFFICIENCY.get(setup.accelerator, 0.3)
    flops = est.step_flops(shape, setup, int(plan.get(f"stages.{i}.train.global_batch_size") or 1))
    seconds = flops / (setup.world * peak * 1e12 * eff)
    steps = plan.get(f"stages.{i}.train.max_steps")
    return {"flops_per_step": float(f"{flops:.6g}"), "peak_tflops": float(peak), "efficiency": eff,
            "step_seconds": float(f"{seconds:.4g}"), "steps": steps,
            "total_seconds": float(f"{seconds * steps:.4g}") if steps else None}, None


def estimate_stage(plan: Plan, i: int) -> dict[str, tuple[Any, str]]:
    p = f"stages.{i}.estimate."
    shape, basis, why = model_shape(plan)
    if shape is None:
        return {p + "basis": (None, D), p + "missing": (why, D), p + "params": (None, D),
                p + "trainable_params": (None, D), p + "memory": (None, D), p + "time": (None, D)}
    setup = stage_setup(plan, i)
    time, no_time = _time_tree(plan, i, shape, setup)
    src = "catalog:model_shapes" if basis.startswith("catalog") else D
    return {p + "basis": (basis, src), p + "missing": (no_time, D), p + "params": (shape.params(), src),
            p + "trainable_params": (est.trainable_params(shape, setup), D),
            p + "memory": (memory_tree(plan, est.estimate_memory(shape, setup)), D), p + "time": (time, D)}


def estimate_resources(plan: Plan) -> Plan:
    out: dict[str, tuple[Any, str]] = {}
    for i in range(plan.stage_count()):
        if plan.get(f"stages.{i}.kind") in TRAINING_KINDS and f"stages.{i}.train.global_batch_size" in plan.values:
            out.update(estimate_stage(plan, i))
    return plan.with_values(out)
