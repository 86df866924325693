"""Pass 8: stage wiring (datasets, init_from, device), LoRA targets from the family, and explicit trainer settings."""

from __future__ import annotations

from typing import Any

from tkc.bundle.kinds import STAGE_DATASET_KINDS
from tkc.catalog.registry import families
from tkc.compiler.passes._util import source_of
from tkc.compiler.passes.resolve_model_family import FALLBACK
from tkc.compiler.plan import Plan
from tkc.schema.stages import TRAINING_KINDS

D = "derived:plan_stages"
# The hardware's accelerator -> the device kind a stage runs on (ROCm builds of torch address AMD GPUs as cuda).
DEVICE_OF = {"cpu": "cpu", "cuda": "cuda", "rocm": "cuda", "npu": "npu"}
# Values pinned here so a library upgrade cannot change them silently (AdamW's own defaults today).
TRAINER_DEFAULTS = {"optimizer": "adamw_torch", "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
                    "deterministic": True}


def _datasets(plan: Plan, i: int, kind: str) -> tuple[Any, str] | None:
    if plan.get(f"stages.{i}.datasets") is not None:
        return None
    wanted = STAGE_DATASET_KINDS.get(kind)
    if wanted is None:
        return [], D
    names = sorted(n for n in plan.inputs.datasets if plan.get(f"datasets.{n}.kind") in wanted)
    return names, D


def _init_from(plan: Plan, i: int) -> tuple[Any, str]:
    raw = plan.get(f"stages.{i}.init_from")
    if raw == "base":
        return None, "recipe"
    if raw != "previous":
        return raw, "recipe"
    earlier = [plan.get(f"stages.{j}.name") for j in range(i) if plan.get(f"stages.{j}.kind") in TRAINING_KINDS]
    return (earlier[-1] if earlier else None), D


def _device(plan: Plan) -> tuple[str, str]:
    """Every stage's device kind, from the hardware's accelerator (its provenance: the profile or the recipe)."""
    accelerator = plan.get("hardware.accelerator", "cpu")
    return DEVICE_OF[accelerator], plan.provenance.get("hardware.accelerator", D)


def _lora(plan: Plan, i: int) -> dict[str, tuple[Any, str]]:
    p = f"stages.{i}.finetuning.lora."
    if plan.get(f"stages.{i}.finetuning.method") != "lora" or plan.get(p + "rank") is None:
        return {}
    out: dict[str, tuple[Any, str]] = {}
    if plan.get(p + "alpha") is None:
        out[p + "alpha"] = (2.0 * plan.get(p + "rank"), D)
    targets = plan.get(p + "targets")
    if targets in ("auto", "all"):
        # Explicit module names, never PEFT's "all-linear": what is adapted must not depend on the PEFT version.
        fam = families().get(plan.get("model.family") or "")
        out[p + "targets"] = (list(fam.lora_targets), f"family:{fam.id}") if fam else (["q_proj", "v_proj"], FALLBACK)
    return out


def _needs_default_lora(plan: Plan, i: int) -> dict[str, tuple[Any, str]]:
    """method: lora without a lora block gets the schema's LoRA defaults, written out."""
    if plan.get(f"stages.{i}.finetuning.method") != "lora" or f"stages.{i}.finetuning.lora.rank" in plan.values:
        return {}
    from tkc.schema.recipe import LoraSpec

    return {f"stages.{i}.finetuning.lora.{k}": (v, "default") for k, v in LoraSpec().model_dump().items()}


def _freeze(plan: Plan, i: int) -> dict[str, tuple[Any, str]]:
    p = f"stages.{i}.finetuning.freeze."
    if plan.get(f"stages.{i}.finetuning.method") != "freeze":
        return {}
    out: dict[str, tuple[Any, str]] = {}
    if p + "trainable_layers" not in plan.values:
        out[p + "trainable_layers"], out[p + "trainable_modules"] = (2, "default"), ([], "default")
    fam = families().get(plan.get("model.family") or "")
    out[p + "layers_path"] = (fam.layers_path, f"family:{fam.id}") if fam else ("model.layers", FALLBACK)
    return out


# LLaMA-Factory's defaults: the vision tower frozen, the projector and the language model trained
MULTIMODAL_SWITCHES = {"freeze_vision_tower": True, "freeze_multi_modal_projector": False,
                       "freeze_language_model": False}


def _multimodal(plan: Plan, i: int) -> dict[str, tuple[Any, str]]:
    """A vision-language model's freeze switches, from the stage's finetuning block (else the top-level one);
    none for a text-only model (MM010 refuses switches there)."""
    if plan.get("model.multimodal") is None:
        return {}
    stage = plan.inputs.recipe.spec.stages[i]
    spec = stage.finetuning or plan.inputs.recipe.spec.finetuning
    root: tuple[Any, ...] = ("stages", i, "finetuning") if stage.finetuning else ("finetuning",)
    out: dict[str, tuple[Any, str]] = {}
    for key, default in MULTIMODAL_SWITCHES.items():
        value = getattr(spec, key)
        out[f"stages.{i}.finetuning.multimodal.{key}"] = (
            (default, "default") if value is None else (value, source_of(plan, (*root, key))))
    return out


def plan_stages(plan: Plan) -> Plan:
    for i in range(plan.stage_count()):
        kind = plan.get(f"stages.{i}.kind")
        out: dict[str, tuple[Any, str]] = {}
        ds = _datasets(plan, i, kind)
        if ds is not None:
            out[f"stages.{i}.datasets"] = ds
        out[f"stages.{i}.init_from"] = _init_from(plan, i)
        out[f"stages.{i}.device"] = _device(plan)
        if kind in TRAINING_KINDS:
            out.update({f"stages.{i}.train.{k}": (v, "default:tkc") for k, v in TRAINER_DEFAULTS.items()})
            out.update(_freeze(plan, i))
            out.update(_multimodal(plan, i))
        plan = plan.with_values(out)
        plan = plan.with_values(_needs_default_lora(plan, i))
        plan = plan.with_values(_lora(plan, i))
    return plan
