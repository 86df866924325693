"""Rules about what an export stage can save (listed in compiler/rules.py's RULES table)."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.compiler.plan import Plan

Violation = tuple[tuple[str | int, ...], str, str | None]


def export_unmerged_needs_lora(plan: Plan) -> Iterator[Violation]:
    """merge_adapter: false saves the source stage's adapter: that stage must have trained one (method: lora)."""
    names = [plan.get(f"stages.{j}.name") for j in range(plan.stage_count())]
    for i in range(plan.stage_count()):
        if plan.get(f"stages.{i}.kind") != "export" or plan.get(f"stages.{i}.options.merge_adapter") is not False:
            continue
        source = plan.get(f"stages.{i}.init_from") or (names[i - 1] if i else None)
        if source not in names[:i]:
            continue  # STAGE001 reports a bad init_from; an export first in the list has no source at all
        j = names.index(source)
        method = plan.get(f"stages.{j}.finetuning.method")
        if method != "lora":
            yield (("stages", i, "merge_adapter"), f"export stage {names[i]!r}: merge_adapter: false saves the "
                   f"LoRA adapter of {source!r}, which trains no adapter (method: {method or 'none'})",
                   "use merge_adapter: true, or export a LoRA stage")
