"""The shipped tiny recipes, compiled by tkc.compiler and run end to end by the runtime (real data pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def compile_to(recipe: Path, out: Path, overrides: tuple[str, ...] = ()) -> Path:
    from tkc.bundle.io import write_bundle
    from tkc.compiler.pipeline import compile_recipe

    compiled = compile_recipe(recipe, list(overrides))
    volatile = {"source_root": str(compiled.source_root)}
    write_bundle(out, compiled.files, volatile, compiled.plan.inputs.tkc_version, True, compiled.sources)
    return out


@pytest.fixture(autouse=True)
def _real_data(monkeypatch):
    monkeypatch.delenv("TKC_TEST_STANDIN_DATA", raising=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_sft_dpo", "tiny_kto", "tiny_rm_ppo", "tiny_grpo", "tiny_vlm_sft"])
def test_tiny_recipe_runs(tmp_path, name):
    from tkc.runtime.run import run_bundle

    bundle = compile_to(RECIPES / f"{name}.yaml", tmp_path / name)
    assert run_bundle(bundle) == 0
    plan = json.loads((bundle / "resolved.json").read_text())
    for st in plan["stages"]:
        out = bundle / "outputs" / st["name"]
        assert (out / "DONE").exists(), st["name"]
        if st.get("train"):
            losses = [json.loads(x)["loss"] for x in (out / "steps.jsonl").read_text().splitlines()]
            assert losses and all(abs(v) < 1e4 for v in losses)
    assert run_bundle(bundle) == 0  # every stage DONE: a second run skips them all


@pytest.mark.slow
def test_demo_recipe_learns(tmp_path):
    """The demo: pt from scratch -> LoRA sft -> eval; loss falls and the exact-match score is readable."""
    from tkc.runtime.run import run_bundle

    bundle = compile_to(RECIPES / "demo.yaml", tmp_path / "demo")
    assert run_bundle(bundle) == 0
    pt = json.loads((bundle / "outputs" / "pretrain" / "metrics.json").read_text())
    assert pt["train_loss_last"] < 0.7 * pt["train_loss_first"]
    ev = json.loads((bundle / "outputs" / "eval" / "metrics.json").read_text())
    assert 0.0 <= ev["exact_match"] <= 1.0 and ev["total"] > 0
