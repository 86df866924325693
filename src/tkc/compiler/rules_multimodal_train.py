"""Rules about training a vision-language model (listed in rules.py's RULES): freeze switches and packing."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.compiler.media import media_kinds
from tkc.compiler.passes.plan_stages import MULTIMODAL_SWITCHES
from tkc.compiler.plan import Plan

PACKED_MEDIA = ("images",)  # media kinds whose rows data.packing joins (each sample's media kept in order)

Violation = tuple[tuple[str | int, ...], str, str | None]


def _finetuning_key(plan: Plan, i: int, key: str) -> tuple[str | int, ...]:
    """Where a stage's finetuning value was set: the stage's own finetuning block, else the top-level one."""
    stage_path = ("stages", i, "finetuning", key)
    return stage_path if stage_path in plan.inputs.recipe.positions else ("finetuning", key)


def switches_need_multimodal(plan: Plan) -> Iterator[Violation]:
    """freeze_vision_tower & co. on a text-only model would be ignored, silently."""
    if plan.get("model.multimodal") is not None:
        return
    spec = plan.inputs.recipe.spec
    for i, stage in enumerate(spec.stages):
        ft = getattr(stage, "finetuning", None) or spec.finetuning
        for key in MULTIMODAL_SWITCHES:
            if getattr(ft, key, None) is not None:
                yield (_finetuning_key(plan, i, key), f"stage {plan.get(f'stages.{i}.name')!r}: {key} applies to "
                       f"vision-language models, and model family {plan.get('model.family')!r} is text-only",
                       f"remove {key}")


def lora_needs_language_model(plan: Plan) -> Iterator[Violation]:
    """LoRA adapts the language model's layers only: with the language model frozen it would have none."""
    for i in range(plan.stage_count()):
        if plan.get(f"stages.{i}.finetuning.method") == "lora" and \
                plan.get(f"stages.{i}.finetuning.multimodal.freeze_language_model"):
            yield (_finetuning_key(plan, i, "freeze_language_model"),
                   f"stage {plan.get(f'stages.{i}.name')!r}: method lora adapts the language model only, and "
                   "freeze_language_model freezes it", "use method: full with freeze_language_model (the projector "
                   "and, with freeze_vision_tower: false, the vision tower train), or freeze_language_model: false")


def no_packing_with_media(plan: Plan) -> Iterator[Violation]:
    """Packing keeps each sample's images with its tokens (the runtime splits positions per sample: Qwen2-VL's
    multimodal RoPE included); audio and video are not packed yet (their features are not split per sample)."""
    if not plan.get("data.packing"):
        return
    for name in plan.inputs.datasets:
        kinds = [k for k in media_kinds(plan.get(f"datasets.{name}.columns")) if k not in PACKED_MEDIA]
        if kinds:
            yield (("data", "packing"), f"data.packing joins rows end to end, and dataset {name!r} has "
                   f"{', '.join(kinds)}: tkc packs rows with {', '.join(PACKED_MEDIA)} only (each packed sample's "
                   f"{' and '.join(kinds)} would not be kept apart from the others)",
                   "set data.packing: false (on CPU, train.padding unpadded already skips the padding)")
