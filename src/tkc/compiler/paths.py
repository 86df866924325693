"""Which folders a recipe may read: its source root and the `read_roots` it lists. Anything else is PATH001.

Every local path the recipe reads (model folder, datasets, the dataset registry and its entries, `extends:` bases,
reward bundles) must resolve, after following symlinks, inside the source root (the recipe's folder, or
--source-root) or inside a folder listed under top-level `read_roots:` (relative to the recipe's folder). A path
outside is reported at its key and not read. Hub ids are not paths. The bundle records the roots relative to the
source root (`read_roots` in resolved.json), so `tkc run` applies the same rule to the source root it is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tkc.schema.load import LoadedRecipe

KeyPath = tuple[str | int, ...]
HINT = ("keep it inside the recipe's folder, or list the folder it is in under top-level `read_roots:` "
        "(relative to the recipe's folder)")


@dataclass(frozen=True)
class PathFacts:
    """The resolved read roots, as recorded in the bundle, and every path found outside them (key, message)."""

    roots: tuple[Path, ...] = ()
    recorded: tuple[str, ...] = ()           # extra roots relative to the source root (POSIX), for resolved.json
    outside: tuple[tuple[KeyPath, str], ...] = ()


def read_roots(recipe: LoadedRecipe, root: Path) -> PathFacts:
    base = recipe.entry.parent
    extra = [(base / r).expanduser().resolve() for r in recipe.spec.read_roots]
    recorded = tuple(Path(os.path.relpath(r, root.resolve())).as_posix() for r in extra)
    return PathFacts((root.resolve(), *extra), recorded)


def outside(path: Path, roots: tuple[Path, ...]) -> Path | None:
    """The real path (symlinks followed) when it is outside every root, else None."""
    real = Path(path).expanduser().resolve()
    return None if not roots or any(real.is_relative_to(r) for r in roots) else real


def message(what: str, text: str, real: Path, roots: tuple[Path, ...]) -> str:
    allowed = ", ".join(str(r) for r in roots)
    return f"{what} {text!r} resolves to {real}, outside the folders this recipe may read ({allowed})"


def check(facts: PathFacts, key: KeyPath, what: str, text: str, path: Path) -> PathFacts:
    """facts with one more finding when `path` lies outside the roots."""
    real = outside(path, facts.roots)
    if real is None:
        return facts
    return PathFacts(facts.roots, facts.recorded, (*facts.outside, (key, message(what, text, real, facts.roots))))


def check_recipe_files(recipe: LoadedRecipe, facts: PathFacts) -> PathFacts:
    """`extends:` bases: inside the roots or the entry recipe's own folder."""
    roots = tuple(dict.fromkeys((*facts.roots, recipe.entry.parent.resolve())))
    for path in sorted(recipe.files):
        if path != recipe.entry and outside(path, roots) is not None:
            found = (("extends",), message("extends base", str(path), path.resolve(), roots))
            facts = PathFacts(facts.roots, facts.recorded, (*facts.outside, found))
    return facts


def check_reward_bundles(recipe: LoadedRecipe, root: Path, facts: PathFacts) -> PathFacts:
    from tkc.compiler.inputs import is_bundle_ref, split_bundle_ref

    for i, stage in enumerate(recipe.spec.stages):
        ref = getattr(stage, "reward_model", None)
        if ref and is_bundle_ref(ref):
            text = split_bundle_ref(ref)[0]
            facts = check(facts, ("stages", i, "reward_model"), "reward bundle", text, root / text)
    return facts


def escaping_links(folder: Path) -> list[str]:
    """Non-hidden entries of a folder that are symlinks resolving outside it."""
    real = folder.resolve()
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_symlink() and not any(p.startswith(".") for p in rel.parts) \
                and not path.resolve().is_relative_to(real):
            out.append(rel.as_posix())
    return out
