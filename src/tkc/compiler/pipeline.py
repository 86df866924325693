"""The compiler: load inputs once, then run the passes below in order. Each pass is pure: Plan -> Plan."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkc.bundle.canonical import pretty_json_bytes
from tkc.bundle.plan import structure_plan, unstructure_plan
from tkc.compiler.inputs import load_inputs, relpath
from tkc.compiler.passes.check_constraints import check_constraints
from tkc.compiler.passes.derive_parallelism import derive_parallelism
from tkc.compiler.passes.derive_precision import derive_precision
from tkc.compiler.passes.estimate_resources import estimate_resources
from tkc.compiler.passes.mark_hermeticity import mark_hermeticity
from tkc.compiler.passes.normalize_recipe import normalize_recipe
from tkc.compiler.passes.plan_stages import plan_stages
from tkc.compiler.passes.render_launch import render_launch
from tkc.compiler.passes.resolve_benchmarks import resolve_benchmarks
from tkc.compiler.passes.resolve_chat_template import resolve_chat_template
from tkc.compiler.passes.resolve_datasets import resolve_datasets
from tkc.compiler.passes.resolve_hardware_profile import resolve_hardware_profile
from tkc.compiler.passes.resolve_media import resolve_media
from tkc.compiler.passes.resolve_model_family import resolve_model_family
from tkc.compiler.passes.resolve_reward_bundles import resolve_reward_bundles
from tkc.compiler.passes.select_lockfile import select_lockfile
from tkc.compiler.plan import Plan, bundle_files, unflatten
from tkc.schema.diagnostics import CompileError
from tkc.schema.load import LoadedRecipe, load_recipe

SOURCE_FILE = "recipe/tkc-source.json"   # which recipe file is the entry, and the --set overrides
PASSES: tuple[Callable[[Plan], Plan], ...] = (
    normalize_recipe,
    resolve_model_family,
    resolve_chat_template,
    resolve_datasets,
    resolve_media,
    resolve_benchmarks,
    resolve_hardware_profile,
    derive_parallelism,
    derive_precision,
    plan_stages,
    resolve_reward_bundles,
    estimate_resources,
    check_constraints,
    select_lockfile,
    mark_hermeticity,
    render_launch,
)


@dataclass(frozen=True)
class Compiled:
    """A compiled recipe: the plan, the resolved tree and the bundle's hashed files (path -> bytes)."""

    plan: Plan
    resolved: dict[str, Any]
    files: dict[str, bytes]        # hashed: what the runtime consumes
    sources: dict[str, bytes]      # verified, not hashed: recipe copies, overrides, provenance
    source_root: Path


def run_passes(plan: Plan, trace: Callable[[str, Plan], None] | None = None) -> Plan:
    for step in PASSES:
        plan = step(plan)
        if trace:
            trace(step.__name__, plan)
    return plan


def _recipe_files(recipe: LoadedRecipe) -> tuple[dict[str, bytes], str]:
    """Recipe files stored relative to their common folder, so `extends:` still resolves inside the bundle."""
    common = Path(os.path.commonpath([str(p.parent) for p in recipe.files]))
    files = {f"recipe/{relpath(p, common)}": data for p, data in recipe.files.items()}
    return files, f"recipe/{relpath(recipe.entry, common)}"


def compile_loaded(recipe: LoadedRecipe, source_root: Path | None = None,
                   trace: Callable[[str, Plan], None] | None = None) -> Compiled:
    root = (source_root or recipe.entry.parent).resolve()
    plan = run_passes(Plan(load_inputs(recipe, root)), trace)
    refused = {d.path for d in recipe.problems if d.path}   # a key the schema refused gets no follow-on rule
    found = [*recipe.problems, *(d for d in plan.diagnostics if d.path not in refused)]
    if found:
        raise CompileError(sorted(found, key=lambda d: (d.file or "~", d.line or 0, d.col or 0, d.code)))
    # the typed plan is the contract: what does not structure is a compiler bug, refused here, not at run time
    resolved = unstructure_plan(structure_plan(unflatten(plan.values)))
    sources, entry = _recipe_files(recipe)
    sources[SOURCE_FILE] = pretty_json_bytes({"entry": entry, "overrides": list(recipe.overrides)})
    sources["provenance.json"] = pretty_json_bytes({k: v for k, v in plan.provenance.items()
                                                    if not k.startswith("_files.")})
    files: dict[str, bytes] = {path: text.encode("utf-8") for path, text in bundle_files(plan.values).items()}
    files["resolved.json"] = pretty_json_bytes(resolved)
    return Compiled(plan, resolved, files, sources, root)


def compile_recipe(path: Path | str, overrides: list[str] | tuple[str, ...] = (),
                   source_root: Path | None = None) -> Compiled:
    """Recipe file -> Compiled (nothing written). Raises CompileError listing every problem."""
    return compile_loaded(load_recipe(Path(path), overrides, tolerant=True, source_root=source_root), source_root)
