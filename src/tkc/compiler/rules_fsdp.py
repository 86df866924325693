"""Rules about what FSDP2 (`launch.kind: fsdp`, tkc.runtime.strategy.fsdp) can train (listed in rules.py's RULES)."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.compiler.plan import Plan

Violation = tuple[tuple[str | int, ...], str, str | None]


def _fsdp_stages(plan: Plan) -> Iterator[tuple[int, str]]:
    """Training stages FSDP2 shards: launch.kind fsdp over more than one process (one process trains unsharded)."""
    if plan.get("launch.kind") != "fsdp":
        return
    for i in range(plan.stage_count()):
        world = plan.get(f"stages.{i}.train.world_size")
        if isinstance(world, int) and world > 1:
            yield i, plan.get(f"stages.{i}.name")


def _where(plan: Plan, i: int, key: str) -> tuple[str | int, ...]:
    """The stage's own setting when the recipe wrote one there, else the top-level one."""
    own: tuple[str | int, ...] = ("stages", i, *key.split("."))
    return own if own in plan.inputs.recipe.positions else tuple(key.split("."))


def fsdp_no_quantization(plan: Plan) -> Iterator[Violation]:
    """bitsandbytes' 4/8-bit weights are not plain tensors FSDP2 can shard and gather."""
    for i, name in _fsdp_stages(plan):
        if plan.get(f"stages.{i}.finetuning.quantization.bits") is not None:
            yield (_where(plan, i, "finetuning.quantization"), f"stage {name!r}: QLoRA (finetuning.quantization) "
                   "cannot be sharded by FSDP2: the quantized base weights are not plain tensors",
                   "use launch.kind: deepspeed (ZeRO), plain LoRA without quantization, or one device")


def fsdp_no_fp16(plan: Plan) -> Iterator[Violation]:
    """fp16 needs loss scaling, which tkc's FSDP2 strategy does not do (bf16 needs none)."""
    for i, name in _fsdp_stages(plan):
        if plan.get(f"stages.{i}.train.precision") == "fp16":
            yield (_where(plan, i, "train.precision"), f"stage {name!r}: fp16 under FSDP2 would train without loss "
                   "scaling (gradients underflow); tkc's FSDP2 runs bf16 or fp32",
                   "use precision: bf16 on hardware that has it, or launch.kind: deepspeed (fp16 with loss scaling)")
