"""Dead settings (DEAD001): values a recipe sets that no stage uses, each with where it was set and what overrode it.

Notes, not errors: the bundle is the same with or without the dead value (its hash too), so `tkc compile` prints
them and exits 0; `--strict` refuses them. Read from the recipe's key positions after the passes; the plan is
not changed, so notes never reach the bundle."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.compiler.plan import Plan
from tkc.schema.diagnostics import Diagnostic
from tkc.schema.load import LoadedRecipe
from tkc.schema.stages import TRAINING_KINDS
from tkc.schema.yaml_loader import KeyPath, dotted

CODE = "DEAD001"
_USED_ELSEWHERE = {("train", "seed")}   # the top-level train.seed is also the bundle's seed


def _where(recipe: LoadedRecipe, path: KeyPath) -> str:
    pos = recipe.positions.get(path)
    return f"{pos.file}:{pos.line}" if pos else "?"


def _set_under(recipe: LoadedRecipe, root: KeyPath) -> list[KeyPath]:
    """The leaf keys the recipe (files or --set) wrote under `root`, in file order."""
    paths = [p for p in recipe.positions if len(p) > len(root) and p[:len(root)] == root]
    leaves = [p for p in paths if not any(len(q) > len(p) and q[:len(p)] == p for q in paths)]
    return sorted(leaves, key=lambda p: (recipe.positions[p].file, recipe.positions[p].line, recipe.positions[p].col))


def _stages(plan: Plan) -> list[tuple[int, str, str]]:
    return [(i, plan.get(f"stages.{i}.kind"), plan.get(f"stages.{i}.name")) for i in range(plan.stage_count())]


def _overridden(plan: Plan, top: KeyPath, stage_key: tuple[str | int, ...], block: bool) -> Iterator[Diagnostic]:
    """Top-level `top` leaves that every training stage replaces: per key (train), or as a block (finetuning)."""
    recipe = plan.inputs.recipe
    trainers = [(i, name) for i, kind, name in _stages(plan) if kind in TRAINING_KINDS]
    for path in _set_under(recipe, top):
        if path in _USED_ELSEWHERE:
            continue
        own = [(i, name, ("stages", i, *stage_key) if block else ("stages", i, *stage_key, *path[len(top):]))
               for i, name in trainers]
        if not trainers:
            msg = "no stage trains, so nothing reads it"
        elif all(p in recipe.positions for _, _, p in own):
            sets = "its own " + ("block" if block else str(path[-1]))
            msg = f"every training stage sets {sets}: " + ", ".join(
                f"{name!r} at {_where(recipe, p)}" for _, name, p in own)
        else:
            continue
        yield plan.diagnostic(CODE, f"note: set here but never used, {msg}", path,
                              "remove it, or drop the stages' own values to use it")


def _ignored_blocks(plan: Plan) -> Iterator[Diagnostic]:
    """train/finetuning under a stage that does not train (eval, export, infer): accepted by the schema, unread."""
    recipe = plan.inputs.recipe
    for i, kind, name in _stages(plan):
        if kind in TRAINING_KINDS:
            continue
        for block in ("train", "finetuning"):
            for path in _set_under(recipe, ("stages", i, block)):
                yield plan.diagnostic(CODE, f"note: set here but never used, stage {name!r} ({kind}) does not "
                                      f"train", path, f"remove {dotted(path)}")


def dead_settings(plan: Plan) -> list[Diagnostic]:
    """Every DEAD001 note for a compiled plan, in recipe order."""
    found = [*_overridden(plan, ("train",), ("train",), block=False),
             *_overridden(plan, ("finetuning",), ("finetuning",), block=True), *_ignored_blocks(plan)]
    return sorted(found, key=lambda d: (d.file or "~", d.line or 0, d.col or 0))
