"""The typed plan: every shipped recipe's resolved.json round-trips exactly; a bad tree names its key path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tkc.bundle.plan import (
    PlanError,
    ResolvedDpoOptions,
    ResolvedNoOptions,
    ResolvedPlan,
    load_plan,
    structure_plan,
    unstructure_plan,
)
from tkc.compiler import compile_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def resolved() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(compile_recipe(p).files["resolved.json"]) for p in RECIPES}


@pytest.mark.parametrize("name", [p.stem for p in RECIPES])
def test_every_recipe_round_trips_exactly(resolved, name):
    tree = resolved[name]
    plan = structure_plan(tree)
    assert isinstance(plan, ResolvedPlan)
    assert unstructure_plan(plan) == tree
    assert json.dumps(unstructure_plan(plan), sort_keys=True) == json.dumps(tree, sort_keys=True)


def test_fields_are_typed(resolved):
    plan = structure_plan(resolved["tiny_sft_dpo"])
    sft, dpo = plan.stage("sft"), plan.stage("dpo")
    assert isinstance(sft.options, ResolvedNoOptions) and isinstance(dpo.options, ResolvedDpoOptions)
    assert dpo.options.beta == resolved["tiny_sft_dpo"]["stages"][1]["options"]["beta"]
    assert sft.train is not None and sft.train.seed == 42 and sft.finetuning is not None
    assert plan.stage("infer").train is None
    assert plan.template is not None and plan.template.stop_tokens == tuple(resolved["tiny_sft_dpo"]["template"]
                                                                            ["stop_tokens"])


def _error(tree: dict[str, Any], edit) -> str:
    tree = copy.deepcopy(tree)
    edit(tree)
    with pytest.raises(PlanError) as info:
        structure_plan(tree)
    return str(info.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["stages"][1]["options"].pop("beta"), "stages[1].options.beta: missing key"),
    (lambda r: r["stages"][1]["options"].update(beta="0.1"), "stages[1].options.beta: expected float, got str"),
    (lambda r: r["stages"][1]["options"].update(betta=0.1), "stages[1].options: unknown key betta"),
    (lambda r: r.update(extra=1), "(top level): unknown key extra"),
    (lambda r: r["stages"][0]["train"].update(seed=True), "stages[0].train.seed: expected int, got bool"),
    (lambda r: r["stages"][0].pop("train"), "stages[0].train: missing key"),
    (lambda r: r["stages"][2].update(train={}), "stages[2].train: only training stages"),
    (lambda r: r["stages"][1].update(kind="dpoo"), "stages[1].kind: unknown stage kind 'dpoo'"),
    (lambda r: r["datasets"]["arith_sft"]["columns"].update(prompt=3),
     "datasets['arith_sft'].columns.prompt: expected str, got int"),
    (lambda r: r["template"].update(stop_tokens="<|im_end|>"), "template.stop_tokens: expected list, got str"),
    (lambda r: r["model"].update(files=[]), "model.files: expected object, got list"),
    (lambda r: r["launch"].pop("world_size"), "launch.world_size: missing key"),
])
def test_bad_tree_names_the_key_path(resolved, edit, message):
    assert message in _error(resolved["tiny_sft_dpo"], edit)


def test_every_problem_is_reported_at_once(resolved):
    def two(r):
        r["seed"] = "42"
        r["stages"][1]["options"]["zzz"] = 1
    text = _error(resolved["tiny_sft_dpo"], two)
    assert "seed: expected int, got str" in text and "stages[1].options: unknown key zzz" in text


def test_load_plan_reads_a_bundle(resolved, tmp_path):
    (tmp_path / "resolved.json").write_text(json.dumps(resolved["demo"]), encoding="utf-8")
    assert load_plan(tmp_path).name == "demo"
    (tmp_path / "resolved.json").write_text("{", encoding="utf-8")
    with pytest.raises(PlanError, match="resolved.json: cannot read"):
        load_plan(tmp_path)


def test_tkc_run_refuses_a_plan_that_does_not_structure(tkc, tmp_path):
    """A resolved.json edited by hand (its manifest recomputed, so `tkc verify` passes) is refused by `tkc run`
    with exit 2 and the key path, before any stage starts."""
    from tkc.bundle.canonical import sha256_bytes
    from tkc.bundle.io import bundle_hash

    out = tmp_path / "run"
    code, _, err = tkc("compile", REPO / "recipes" / "demo.yaml", "-o", out)
    assert code == 0, err
    tree = json.loads((out / "resolved.json").read_text(encoding="utf-8"))
    tree["stages"][0]["train"]["seed"] = "42"
    data = (json.dumps(tree, sort_keys=True, indent=2) + "\n").encode()
    (out / "resolved.json").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["resolved.json"] = sha256_bytes(data)
    manifest["bundle_hash"] = bundle_hash(manifest["files"])
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert tkc("verify", out)[0] == 0
    code, stdout, stderr = tkc("run", out)
    assert code == 2
    assert "stages[0].train.seed: expected int, got str" in stdout + stderr
    assert not (out / "outputs" / "pretrain").exists()
