"""ppo/grpo `reward_model: path/to/bundle[:stage]`: checked at compile time, pinned by the other bundle's hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

COMMON = f"""
read_roots: [{RECIPES}]
model: {{path: {RECIPES / 'assets' / 'tiny-qwen2'}, init: scratch}}
data:
  datasets:
    arith_sft: {{path: {RECIPES / 'data' / 'arith_sft.jsonl'}, format: alpaca}}
    arith_pref: {{path: {RECIPES / 'data' / 'arith_pref.jsonl'}, format: alpaca, kind: preference}}
  cutoff_len: 64
finetuning: {{method: lora, lora: {{rank: 8, targets: auto}}}}
train: {{seed: 42, learning_rate: 1.0e-3, global_batch_size: 4, max_steps: 2, save_steps: 10}}
hardware: cpu
"""


def rm_recipe(folder: Path, *, lr: float = 1e-3, stages: str = "  - {kind: rm, name: reward, datasets: [arith_pref]}\n"
              ) -> Path:
    path = folder / "rm.yaml"
    path.write_text(f"name: tiny_rm\n{COMMON}stages:\n{stages}".replace("learning_rate: 1.0e-3",
                                                                      f"learning_rate: {lr}"))
    return path


def ppo_recipe(folder: Path, reward_model: str, kind: str = "ppo") -> Path:
    path = folder / f"{kind}.yaml"
    extra = "max_new_tokens: 4" if kind == "ppo" else "num_generations: 2, max_new_tokens: 4"
    path.write_text(f"name: tiny_{kind}\n{COMMON}stages:\n"
                    f"  - {{kind: {kind}, datasets: [arith_sft], reward_model: {reward_model}, {extra}}}\n")
    return path


def compile_ok(tkc, recipe: Path, out: Path) -> dict:
    code, stdout, stderr = tkc("compile", str(recipe), "-o", str(out), "--force")
    assert code == 0, stdout + stderr
    return json.loads((out / "resolved.json").read_text())


def manifest_hash(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["bundle_hash"]


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture
def rm_bundle(tkc, tmp_path) -> Path:
    compile_ok(tkc, rm_recipe(tmp_path), tmp_path / "rm_bundle")
    return tmp_path / "rm_bundle"


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_bundle_path_is_resolved_relative_to_the_recipe_and_pinned_by_hash(tkc, tmp_path, rm_bundle, kind):
    resolved = compile_ok(tkc, ppo_recipe(tmp_path, "./rm_bundle", kind), tmp_path / "out")
    ref = resolved["stages"][0]["options"]["reward_bundle"]
    assert ref == {"path": "rm_bundle", "bundle_hash": manifest_hash(rm_bundle), "stage": "reward"}


def test_a_changed_reward_bundle_changes_this_bundles_hash(tkc, tmp_path, rm_bundle):
    ppo = ppo_recipe(tmp_path, "./rm_bundle")
    compile_ok(tkc, ppo, tmp_path / "a")
    compile_ok(tkc, ppo, tmp_path / "b")
    assert manifest_hash(tmp_path / "a") == manifest_hash(tmp_path / "b")
    compile_ok(tkc, rm_recipe(tmp_path, lr=2e-3), rm_bundle)
    compile_ok(tkc, ppo, tmp_path / "c")
    assert manifest_hash(tmp_path / "c") != manifest_hash(tmp_path / "a")


def test_bundle_colon_stage_picks_one_of_several_rm_stages(tkc, tmp_path):
    two = ("  - {kind: rm, name: rm_a, datasets: [arith_pref]}\n"
           "  - {kind: rm, name: rm_b, datasets: [arith_pref], init_from: base}\n")
    compile_ok(tkc, rm_recipe(tmp_path, stages=two), tmp_path / "rms")
    ppo = ppo_recipe(tmp_path, "rms/")
    code, _, err = tkc("compile", str(ppo), "--check")
    assert code == 2 and "RWD001" in err and "has 2 rm stages ['rm_a', 'rm_b']" in err
    assert f"{ppo}:{line_of(ppo, 'reward_model')}" in err
    resolved = compile_ok(tkc, ppo_recipe(tmp_path, "rms:rm_b"), tmp_path / "out")
    assert resolved["stages"][0]["options"]["reward_bundle"]["stage"] == "rm_b"
    code, _, err = tkc("compile", str(ppo_recipe(tmp_path, "./rms:rm_c")), "--check")
    assert code == 2 and "has no rm stage 'rm_c'" in err


@pytest.mark.parametrize("make", ["missing", "plain_dir", "tampered"])
def test_a_path_that_is_not_an_intact_bundle_is_a_compile_error_at_its_line(tkc, tmp_path, rm_bundle, make):
    target = {"missing": "./nowhere", "plain_dir": "./data_dir", "tampered": "./rm_bundle"}[make]
    (tmp_path / "data_dir").mkdir()
    (tmp_path / "data_dir" / "x.txt").write_text("not a bundle")
    if make == "tampered":
        resolved = rm_bundle / "resolved.json"
        plan = json.loads(resolved.read_text())
        plan["stages"][0]["train"]["learning_rate"] = 0.5
        resolved.write_text(json.dumps(plan, sort_keys=True, indent=2) + "\n")
    ppo = ppo_recipe(tmp_path, target)
    code, _, err = tkc("compile", str(ppo), "--check")
    assert code == 2, err
    assert f"{ppo}:{line_of(ppo, 'reward_model')}" in err and "RWD001" in err
    expected = {"missing": "no bundle directory ./nowhere", "plain_dir": "not a tkc bundle (no manifest.json)",
                "tampered": "resolved.json: changed since compile"}[make]
    assert expected in err


def test_a_stage_name_must_be_an_earlier_rm_stage(tkc, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\n{COMMON}stages:\n  - {{kind: sft, name: tuned, datasets: [arith_sft]}}\n"
                    "  - {kind: ppo, datasets: [arith_sft], reward_model: tuned}\n")
    code, _, err = tkc("compile", str(path), "--check")
    assert code == 2 and "STAGE001" in err and "neither an earlier rm stage nor a bundle path" in err


def test_a_reward_bundle_of_another_tokenizer_is_refused(tkc, tmp_path, rm_bundle):
    resolved_path = rm_bundle / "resolved.json"
    resolved = json.loads(resolved_path.read_text())
    assert resolved["model"]["files"]["tokenizer.json"]
    # a bundle compiled for another model: same layout, another tokenizer hash (re-hashed so it stays intact)
    from tkc.bundle.io import read_manifest, write_bundle

    resolved["model"]["files"]["tokenizer.json"] = "0" * 64
    files = {p: (rm_bundle / p).read_bytes() for p in read_manifest(rm_bundle)["files"]}
    files["resolved.json"] = (json.dumps(resolved, sort_keys=True, indent=2) + "\n").encode()
    write_bundle(tmp_path / "other_rm", files, {}, "test", force=True)
    code, _, err = tkc("compile", str(ppo_recipe(tmp_path, "./other_rm")), "--check")
    assert code == 2 and "RWD002" in err and "another tokenizer" in err
