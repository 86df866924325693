"""Every shipped recipe compiles, and its bundle is a reviewed snapshot: a compiler change shows up as a diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from tkc.bundle.io import build_manifest
from tkc.compiler import compile_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml"))
SNAPSHOT_FILES = ("resolved.json", "provenance.json")


def test_recipes_exist():
    assert len(RECIPES) >= 5, "every stage kind and launcher should have a shipped recipe"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_bundle_snapshot(recipe: Path, snapshot):
    compiled = compile_recipe(recipe)
    texts = {**compiled.files, **{k: v for k, v in compiled.sources.items() if k == "provenance.json"}}
    shown = {path: data.decode() for path, data in sorted(texts.items())
             if path in SNAPSHOT_FILES or path.startswith("launch/")}
    shown["bundle_hash"] = build_manifest(compiled.files, "snapshot")["bundle_hash"]
    assert shown == snapshot
