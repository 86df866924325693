"""Every local path a recipe reads stays inside its folder (or --source-root) or a `read_roots:` folder: PATH001."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tkc.compiler import compile_recipe
from tkc.schema.diagnostics import CompileError

DEMO_DATA = "arith_sft: {path: data/arith_sft.jsonl, format: alpaca}"


def _errors(recipe: Path) -> list:
    with pytest.raises(CompileError) as info:
        compile_recipe(recipe)
    return list(info.value.diagnostics)


def _path_errors(recipe: Path) -> dict[str, str]:
    """{dotted key: rendered message} of the PATH001 diagnostics (each must carry a line and the hint)."""
    found = {}
    for d in _errors(recipe):
        if d.code == "PATH001":
            assert d.line is not None and "read_roots" in d.render(), d.render()
            found[d.path] = d.render()
    return found


def _edit(recipes: Path, old: str, new: str) -> Path:
    path = recipes / "demo.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the recipe's, holding a copy of the demo's training data."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "recipes" / "data" / "arith_sft.jsonl", folder / "sft.jsonl")
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "etc_passwd"])
def test_a_dataset_outside_the_recipe_folder_is_refused_at_its_key(demo_copy, outside, how):
    if how == "symlink":  # inside by name, outside once followed
        (demo_copy / "data" / "linked.jsonl").symlink_to(outside / "sft.jsonl")
    text = {"dotdot": "../elsewhere/sft.jsonl", "absolute": str(outside / "sft.jsonl"),
            "symlink": "data/linked.jsonl", "etc_passwd": "../../../../../../../../etc/passwd"}[how]
    recipe = _edit(demo_copy, DEMO_DATA, f"arith_sft: {{path: {json.dumps(text)}, format: alpaca}}")
    found = _path_errors(recipe)
    assert list(found) == ["data.datasets.arith_sft.path"]
    assert f"demo.yaml:{_line(recipe, 'arith_sft: {path')}:" in found["data.datasets.arith_sft.path"]


def test_read_roots_allows_a_listed_folder_and_is_recorded_relative_to_the_source_root(demo_copy, outside):
    _edit(demo_copy, DEMO_DATA, 'arith_sft: {path: "../elsewhere/sft.jsonl", format: alpaca}')
    recipe = _edit(demo_copy, "name: demo\n", "name: demo\nread_roots: [../elsewhere]\n")
    compiled = compile_recipe(recipe)
    assert compiled.resolved["read_roots"] == ["../elsewhere"]
    assert compiled.resolved["datasets"]["arith_sft"]["files"][0]["path"] == "../elsewhere/sft.jsonl"
    assert compiled.plan.provenance["read_roots"] == "recipe"


def test_model_registry_extends_and_reward_bundle_outside_are_each_reported_at_once(demo_copy, outside):
    shutil.copytree(demo_copy / "assets" / "tiny-qwen2", outside / "model")
    (outside / "base.yaml").write_text("template: auto\n")
    (outside / "dataset_info.json").write_text("{}")
    recipe = _edit(demo_copy, "model:\n  path: assets/tiny-qwen2", f"model:\n  path: {outside / 'model'}")
    recipe = _edit(demo_copy, "name: demo\n", "name: demo\nextends: [../elsewhere/base.yaml]\n")
    recipe = _edit(demo_copy, "  cutoff_len: 64\n", "  cutoff_len: 64\n  registry: ../elsewhere/dataset_info.json\n")
    recipe = _edit(demo_copy, "stages:\n", "stages:\n  - {kind: ppo, datasets: [arith_sft], reward_model: ../elsewhere/rm}\n")
    found = _path_errors(recipe)
    assert {"model.path", "extends", "data.registry"} <= set(found)
    assert "stages[0].reward_model" in found, found


def test_a_model_file_symlinked_out_of_the_model_folder_is_refused(demo_copy, outside):
    model = demo_copy / "assets" / "tiny-qwen2"
    shutil.move(model / "tokenizer.json", outside / "tokenizer.json")
    (model / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    found = _path_errors(demo_copy / "demo.yaml")
    assert "symlink out of the model folder" in found["model.path"]


def test_hub_ids_are_not_paths(demo_copy):
    recipe = _edit(demo_copy, DEMO_DATA, "arith_sft: {path: acme/arith-sft, format: alpaca}")
    assert compile_recipe(recipe).resolved["datasets"]["arith_sft"]["source"] == "hub"


def test_the_runtime_refuses_a_data_file_swapped_for_a_link_outside(tkc, demo_copy, outside, tmp_path):
    """Same bytes, so its sha256 still matches: only the read-roots rule, applied again at run, sees it."""
    out = tmp_path / "run"
    assert tkc("compile", demo_copy / "demo.yaml", "-o", out)[0] == 0
    data = demo_copy / "data" / "arith_sft.jsonl"
    data.unlink()
    data.symlink_to(outside / "sft.jsonl")
    proc = subprocess.run([str(Path(sys.executable).parent / "tkc"), "data", "inspect", str(out), "--stage", "sft"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "outside the folders this bundle may read" in proc.stdout and "Traceback" not in proc.stderr


def _line(recipe: Path, needle: str) -> int:
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("how", ["absolute", "symlink", "dotdot"])
def test_an_extends_base_outside_is_not_read_and_its_content_never_echoed(tmp_path, how):
    """A base outside the roots is refused at its extends entry before it is read: /etc/shadow's lines must not
    come back as 'unknown key' errors, and a base that is not a recipe must not be parsed at all."""
    secret = tmp_path / "secret" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:SECRETHASH:20228:0:99999:7:::\n")
    folder = tmp_path / "r"
    folder.mkdir()
    ref = {"absolute": str(secret), "symlink": "base.yaml", "dotdot": "../secret/shadow"}[how]
    if how == "symlink":
        (folder / "base.yaml").symlink_to(secret)
    recipe = folder / "r.yaml"
    recipe.write_text(f"schema_version: 1\nextends: [{ref}]\nname: x\n")
    found = _errors(recipe)
    assert not any("SECRETHASH" in d.render() for d in found), [d.render() for d in found]
    assert [(d.code, d.path, d.line) for d in found if d.code == "PATH001"] == [("PATH001", "extends", 2)]
    assert not any(d.code in ("RECIPE003", "SCHEMA001") and "shadow" in (d.file or "") for d in found)
    assert not any(d.code == "SCHEMA003" for d in found)  # the unread base's keys are not reported missing


def test_an_extends_base_under_read_roots_or_source_root_is_read(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.yaml").write_text("name: from_base\n")
    folder = tmp_path / "r"
    folder.mkdir()
    recipe = folder / "r.yaml"
    recipe.write_text("schema_version: 1\nread_roots: [../shared]\nextends: [../shared/base.yaml]\n")
    assert not any(d.code == "PATH001" for d in _errors(recipe))
    recipe.write_text("schema_version: 1\nextends: [../shared/base.yaml]\n")
    with pytest.raises(CompileError) as info:
        compile_recipe(recipe, source_root=tmp_path)
    assert not any(d.code == "PATH001" for d in info.value.diagnostics)


def test_a_refused_model_folder_gets_no_second_error_calling_it_a_hub_id(demo_copy, outside):
    """PATH001 alone: the folder was not read, so 'cannot detect the model family from hub id ...' was noise."""
    shutil.copytree(demo_copy / "assets" / "tiny-qwen2", outside / "model")
    found = _errors(_edit(demo_copy, "path: assets/tiny-qwen2", f"path: {outside / 'model'}"))
    assert [d.code for d in found] == ["PATH001"], [d.render() for d in found]
