"""Helpers shared by passes: where a recipe value came from."""

from __future__ import annotations

from tkc.compiler.plan import Plan
from tkc.schema.yaml_loader import KeyPath


def source_of(plan: Plan, *paths: KeyPath) -> str:
    """'recipe' (top file), 'recipe:<base file>', 'override' (--set), or 'default' when nobody set it."""
    recipe = plan.inputs.recipe
    for path in paths:
        pos = recipe.positions.get(path)
        if pos is None:
            continue
        if pos.file == "--set":
            return "override"
        entry = recipe.positions.get(())
        return "recipe" if entry is None or pos.file == entry.file else f"recipe:{pos.file.rsplit('/', 1)[-1]}"
    return "default"
