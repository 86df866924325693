"""MEM001: a training stage the memory estimate says cannot fit its device, with the plans that would (each one
re-estimated): ZeRO-3, offload, a smaller micro batch, gradient checkpointing, LoRA, QLoRA."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tkc.compiler import estimate as est
from tkc.compiler.passes.estimate_resources import model_shape, stage_setup
from tkc.compiler.plan import Plan

Violation = tuple[tuple[str | int, ...], str, str | None]
GIB = float(est.GIB)
_ZERO3 = {"sharding": 3, "offload": False, "engine": "deepspeed"}
# (what to change in the recipe, the setup fields it changes); tried alone, then with checkpointing and micro 1
ALTERNATIVES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("train.gradient_checkpointing: true", {"checkpointing": True}),
    ("train.micro_batch_size: 1", {"micro": 1}),
    ("launch: {kind: deepspeed, zero_stage: 3}", _ZERO3),
    ("launch: {kind: deepspeed, zero_stage: 3, offload: true}", {"sharding": 3, "offload": True, "engine": "deepspeed"}),
    ("finetuning.method: lora", {"method": "lora", "bits": 0}),
    ("finetuning: {method: lora, quantization: {bits: 4}} (QLoRA)", {"method": "lora", "bits": 4}),
)
_SMALL = {"checkpointing": True, "micro": 1}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _needed(plan: Plan, shape: est.ModelShape, setup: est.Setup) -> int:
    return est.needed_bytes(est.estimate_memory(shape, setup), int(plan.get("launch.nproc_per_node") or 1),
                            setup.accelerator)


def alternatives(plan: Plan, shape: est.ModelShape, setup: est.Setup) -> list[str]:
    """The changes (alone, else with checkpointing and micro batch 1) whose estimate fits, with what each needs."""
    available = est.available_bytes(float(plan.get("hardware.memory_gb", 16)))
    out = []
    for text, changes in ALTERNATIVES:
        if all(getattr(setup, k) == v for k, v in changes.items()) or (changes == _ZERO3 and setup.world == 1):
            continue                        # nothing changes (ZeRO-3 over one device shards nothing)
        for extra, label in (({}, text), (_SMALL, f"{text} with gradient checkpointing and micro batch 1")):
            needed = _needed(plan, shape, setup.but(**{**changes, **extra}))
            if needed <= available:
                out.append(f"{label}: {_gib(needed)}")
                break
    return out


def _where(plan: Plan, i: int) -> tuple[str | int, ...]:
    paths: tuple[tuple[str | int, ...], ...] = (
        ("stages", i, "finetuning", "method"), ("finetuning", "method"), ("stages", i, "train", "micro_batch_size"),
        ("train", "micro_batch_size"), ("hardware",))
    return next((p for p in paths if p in plan.inputs.recipe.positions), ("stages", i))


def _breakdown(memory: dict[str, Any]) -> str:
    parts = ("weights", "gradients", "optimizer", "activations", "buffers", "overhead")
    return ", ".join(f"{p} {memory[p + '_bytes'] / GIB:.1f}" for p in parts) + " GiB"


def memory_fits(plan: Plan) -> Iterator[Violation]:
    shape, _, _ = model_shape(plan)
    for i in range(plan.stage_count()):
        memory = plan.get(f"stages.{i}.estimate.memory")
        if shape is None or not memory or memory["fits"]:
            continue
        needed, available = memory["needed_bytes"], memory["available_bytes"]
        name, profile = plan.get(f"stages.{i}.name"), plan.get("hardware.profile")
        fits = alternatives(plan, shape, stage_setup(plan, i))
        hint = ("plans that fit: " + "; ".join(fits)) if fits else \
            "no single change fits: use a profile with more memory or more devices"
        yield (_where(plan, i), f"stage {name!r} is predicted to need {_gib(needed)} per device but {profile} has "
               f"{_gib(available)} ({plan.get('hardware.memory_gb')} GB x {est.USABLE_FRACTION} usable): "
               f"{_gib(needed - available)} over ({_breakdown(memory)})", hint)
