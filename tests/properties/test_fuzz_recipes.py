"""Seeded fuzzing: any mutation of a valid recipe either compiles or fails with positioned diagnostics."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from tkc.compiler import compile_recipe
from tkc.schema.diagnostics import CompileError

REPO = Path(__file__).resolve().parents[2]
JUNK = [None, -1, 0, 3.5, "", "x" * 3, "auto", [], {}, [1, "a"], {"k": "v"}, True, 10**12, "1e-3", "💥"]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(data, rng: random.Random):
    paths = [p for p in _paths(data) if p]
    path = rng.choice(paths)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    action = rng.choice(["delete", "replace", "rename", "add"])
    key = path[-1]
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "rename" and isinstance(parent, dict):
        parent[str(key)[:-1] + rng.choice("xyz_")] = parent.pop(key)
    elif action == "add" and isinstance(parent, dict):
        parent[rng.choice(["extra", "lr", "seed", "kind", "path"])] = rng.choice(JUNK)
    else:
        parent[key] = rng.choice(JUNK)


@pytest.mark.parametrize("seed", range(150))
def test_mutated_demo_recipe_never_crashes(tmp_path, seed):
    import shutil

    shutil.copytree(REPO / "recipes", tmp_path / "r")
    rng = random.Random(seed)
    data = yaml.safe_load((tmp_path / "r" / "demo.yaml").read_text())
    for _ in range(rng.randint(1, 3)):
        _mutate(data, rng)
    recipe = tmp_path / "r" / "demo.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    try:
        compile_recipe(recipe)
    except CompileError as exc:
        assert exc.diagnostics, "a CompileError always carries at least one diagnostic"
        for diag in exc.diagnostics:
            assert diag.code and diag.message
            assert diag.file is not None, diag.render()
