"""Hash properties: identical bytes across processes and paths; formatting never matters; meaning always does."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tkc.compiler import compile_recipe

REPO = Path(__file__).resolve().parents[2]


def _hash(recipe: Path, *overrides: str, root: Path | None = None) -> str:
    from tkc.bundle.io import build_manifest

    c = compile_recipe(recipe, list(overrides), root)
    return build_manifest(c.files, "x")["bundle_hash"]


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "volatile.json"}


def test_two_processes_two_locations_identical_bytes(tmp_path):
    trees = []
    for where in ("one", "two/deeper"):
        src = tmp_path / where / "recipes"
        shutil.copytree(REPO / "recipes", src)
        out = tmp_path / where / "bundle"
        subprocess.run([sys.executable, "-m", "tkc.cli.main", "compile", str(src / "demo.yaml"), "-o", str(out)],
                       check=True, capture_output=True, cwd=tmp_path)
        trees.append(_tree(out))
    assert trees[0] == trees[1]


def _reformat(data, rng: random.Random):
    """Same data, different YAML: shuffled key order, flow/block style, explicit quoting, comments."""
    def shuffle(node):
        if isinstance(node, dict):
            items = list(node.items())
            rng.shuffle(items)
            return {k: shuffle(v) for k, v in items}
        if isinstance(node, list):
            return [shuffle(v) for v in node]
        return node

    text = yaml.safe_dump(shuffle(data), sort_keys=False, default_flow_style=rng.choice([None, False]),
                          default_style=rng.choice([None, '"']), width=rng.choice([40, 200]))
    return "# reformatted\n" + "\n".join(line + ("  # note" if rng.random() < 0.3 and line.strip().endswith(
        ("1", "e", "0")) and '"' not in line else "") for line in text.splitlines()) + "\n"


@pytest.mark.parametrize("seed", range(6))
def test_yaml_formatting_does_not_change_the_hash(demo_copy, seed):
    recipe = demo_copy / "demo.yaml"
    base = _hash(recipe)
    data = yaml.safe_load(recipe.read_text())
    other = demo_copy / f"renamed-{seed}.yaml"
    other.write_text(_reformat(data, random.Random(seed)))
    assert yaml.safe_load(other.read_text()) == data
    assert _hash(other) == base


SEMANTIC_EDITS = [
    "stages.0.train.learning_rate=0.0002", "train.seed=1", "train.weight_decay=0.1", "data.cutoff_len=128", "stages.1.train.epochs=2",
    "finetuning.lora.rank=8", "finetuning.lora.variant=dora", "data.train_on_prompt=true",
    "stages.2.max_new_tokens=3", "template=chatml", "stages.1.train.global_batch_size=32", "launch.kind=torchrun",
    "data.datasets.arith_sft.max_samples=10",
]


def test_every_semantic_edit_changes_the_hash(demo_copy):
    recipe = demo_copy / "demo.yaml"
    hashes = {"base": _hash(recipe)}
    for edit in SEMANTIC_EDITS:
        hashes[edit] = _hash(recipe, edit)
    assert len(set(hashes.values())) == len(hashes), hashes


def test_overridden_defaults_do_not_change_the_hash(demo_copy):
    """Both training stages set their own learning rate, so the top-level one is not part of the plan."""
    recipe = demo_copy / "demo.yaml"
    assert _hash(recipe, "train.learning_rate=0.0002") == _hash(recipe)


def test_data_bytes_change_the_hash(demo_copy):
    recipe = demo_copy / "demo.yaml"
    before = _hash(recipe)
    with (demo_copy / "data" / "arith_sft.jsonl").open("a") as fh:
        fh.write('{"instruction": "What is 1+1?", "input": "", "output": "2"}\n')
    assert _hash(recipe) != before


def test_recompiling_from_the_bundle_copy_gives_the_same_hash(tkc, demo_copy, tmp_path):
    code, first, err = tkc("compile", demo_copy / "demo.yaml", "-o", tmp_path / "a", "--set", "train.seed=3")
    assert code == 0, err
    code, second, err = tkc("compile", tmp_path / "a", "-o", tmp_path / "b")
    assert code == 0, err
    assert first.strip() == second.strip()
