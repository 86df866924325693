"""Rules about what tkc can train through DeepSpeed (`launch.kind: deepspeed`; listed in compiler/rules.py's RULES).

The runtime (tkc.runtime.strategy.deepspeed) trains the loop's stages (pt, sft, rm, dpo, kto) through one
DeepSpeed engine per stage. These plans compile today but could not train as declared, so they are refused."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.compiler.plan import Plan

Violation = tuple[tuple[str | int, ...], str, str | None]
_ROLLOUT = ("ppo", "grpo")  # step their own optimizer (ppo) or TRL's (grpo), in one process
_FROZEN_COPY = ("dpo", "kto")  # full/freeze tuning keeps a whole frozen copy of the policy as the reference


def _deepspeed(plan: Plan) -> bool:
    return plan.get("launch.kind") == "deepspeed"


def _where(plan: Plan, *paths: tuple[str | int, ...]) -> tuple[str | int, ...]:
    return next((p for p in paths if p in plan.inputs.recipe.positions), paths[-1])


def deepspeed_loop_stages(plan: Plan) -> Iterator[Violation]:
    """ppo and grpo do not train through the DeepSpeed engine (ROLL001 covers them over several processes)."""
    if not _deepspeed(plan):
        return
    for i in range(plan.stage_count()):
        kind, name = plan.get(f"stages.{i}.kind"), plan.get(f"stages.{i}.name")
        world = plan.get(f"stages.{i}.train.world_size")
        if kind in _ROLLOUT and world == 1:
            yield (_where(plan, ("launch", "kind"), ("stages", i)), f"stage {name!r} ({kind}) cannot train "
                   "through DeepSpeed: it steps its own optimizer in one process",
                   "set launch.kind: local for this recipe, or move the stage into a recipe of its own")


def zero3_whole_copies(plan: Plan) -> Iterator[Violation]:
    """ZeRO-3 shards every parameter as the model is built; a stage that copies whole weights cannot."""
    if not _deepspeed(plan) or plan.get("launch.zero_stage") != 3:
        return
    for i in range(plan.stage_count()):
        kind, name = plan.get(f"stages.{i}.kind"), plan.get(f"stages.{i}.name")
        method = plan.get(f"stages.{i}.finetuning.method")
        if kind in _FROZEN_COPY and method != "lora":
            what = f"its frozen reference is a whole copy of the policy (method {method})"
        elif kind == "rm" and plan.get(f"stages.{i}.init_from"):
            what = "its value head is built from a whole copy of the init_from stage's weights"
        else:
            continue
        yield (_where(plan, ("launch", "zero_stage"), ("stages", i)), f"stage {name!r} ({kind}) cannot train "
               f"under ZeRO-3: {what}", "use launch.zero_stage: 2, or finetuning.method: lora (the reference "
               "is then the policy with its adapter off)")


def qlora_under_zero3(plan: Plan) -> Iterator[Violation]:
    """transformers builds a quantized model whole (no zero.Init): QLoRA's 4/8-bit weights cannot be sharded."""
    if not _deepspeed(plan) or plan.get("launch.zero_stage") != 3:
        return
    for i in range(plan.stage_count()):
        if f"stages.{i}.finetuning.quantization.bits" in plan.values:
            yield (_where(plan, ("launch", "zero_stage"), ("finetuning", "quantization")),
                   f"stage {plan.get(f'stages.{i}.name')!r}: QLoRA cannot train under ZeRO-3: quantized weights "
                   "are loaded whole on every rank, never sharded", "use launch.zero_stage: 2 (the adapter and its "
                   "optimizer state sharded, the quantized base replicated), or drop quantization")


def zero3_same_forwards(plan: Plan) -> Iterator[Violation]:
    """A ZeRO-3 forward gathers each layer's weights from every rank (a collective), so every rank must run the
    same number of forwards. `padding: unpadded` runs each run of equal-length rows as its own forward (only
    pt/sft without NEFTune pack a micro-batch into one), a number that differs between ranks: they would hang."""
    if not _deepspeed(plan) or plan.get("launch.zero_stage") != 3:
        return
    for i in range(plan.stage_count()):
        kind, name = plan.get(f"stages.{i}.kind"), plan.get(f"stages.{i}.name")
        if plan.get(f"stages.{i}.train.padding") != "unpadded":
            continue
        if kind in ("rm", "dpo", "kto") or plan.get(f"stages.{i}.train.neftune_alpha") is not None:
            yield (_where(plan, ("stages", i, "train", "padding"), ("train", "padding"), ("launch", "zero_stage")),
                   f"stage {name!r} ({kind}): padding unpadded under ZeRO-3 would run a different number of "
                   "forwards on each rank (each a collective)", "set train.padding: longest for this stage")
