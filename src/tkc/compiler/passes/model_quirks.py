"""Family quirks the runtime reads from the plan (part of resolve_model_family): MoE training settings, attention.

The router's auxiliary-loss weight comes from the model's own config.json when it has the family's key (as
transformers reads it), else from the family's default; either way with its provenance, so `tkc explain` says
which, and whether LoRA adapts the experts or leaves them frozen.
"""

from __future__ import annotations

from typing import Any

from tkc.catalog.registry import Family
from tkc.schema.recipe import MoESpec


def _aux_coef(fam: Family, config: dict[str, Any] | None, spec: MoESpec | None) -> tuple[float, str]:
    assert fam.moe is not None
    if spec is not None and spec.aux_loss_coef is not None:
        return spec.aux_loss_coef, "recipe"
    key = fam.moe.aux_loss_coef_key
    value = (config or {}).get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), f"derived:resolve_model_family(config.json {key})"
    return fam.moe.aux_loss_coef, f"family:{fam.id}"


def resolve_moe(fam: Family | None, config: dict[str, Any] | None,
                spec: MoESpec | None = None) -> dict[str, tuple[Any, str]]:
    """model.moe: None for a dense family (a recipe's model.moe there is MOE001); else the aux-loss weight, the
    experts' LoRA treatment (recipe, else family), their path."""
    if fam is None or fam.moe is None:
        return {"model.moe": (None, f"family:{fam.id if fam else None}")}
    coef, coef_src = _aux_coef(fam, config, spec)
    lora_experts = spec.lora_experts if spec is not None and spec.lora_experts is not None else fam.moe.lora_experts
    experts = "LoRA adapts the experts" if lora_experts else \
        "experts frozen under LoRA: adapters on the family's lora_targets only"
    src = "recipe" if spec is not None and spec.lora_experts is not None else f"family:{fam.id}"
    return {
        "model.moe.aux_loss_coef": (coef, coef_src),
        "model.moe.lora_experts": (lora_experts, f"{src} ({experts})"),
        "model.moe.experts_path": (fam.moe.experts_path, f"family:{fam.id}"),
    }


def resolve_attention(fam: Family | None) -> dict[str, tuple[Any, str]]:
    """model.attn_implementation: the family's (sdpa unless its transformers class refuses sdpa)."""
    if fam is None:
        return {"model.attn_implementation": ("sdpa", "default")}
    return {"model.attn_implementation": (fam.attn_implementation, f"family:{fam.id}")}
