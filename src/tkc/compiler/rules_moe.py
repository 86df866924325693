"""Rules about mixture-of-experts settings (listed in compiler/rules.py's RULES table)."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.catalog.registry import families
from tkc.compiler.plan import Plan

Violation = tuple[tuple[str | int, ...], str, str | None]


def moe_needs_moe_family(plan: Plan) -> Iterator[Violation]:
    """model.moe (aux-loss weight, LoRA on experts) means something only for a family with experts."""
    family = plan.get("model.family")
    fam = families().get(family or "")
    if plan.inputs.recipe.spec.model.moe is None or fam is None or fam.moe is not None:
        return  # nothing set, a MoE family, or an unknown family (MODEL001 says so)
    yield (("model", "moe"), f"model.moe is set, but family {family!r} is not a mixture-of-experts model",
           "remove model.moe (or set model.family to the MoE family this model belongs to)")
