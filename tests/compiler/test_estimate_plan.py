"""The estimate in the compiled plan: resolved.json fields, the derived micro batch, MEM001 and `tkc explain`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tkc.bundle.plan import structure_plan
from tkc.compiler import compile_recipe
from tkc.schema.diagnostics import CompileError

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, model: str, method: str, hardware: str, *extra: str, batch: int = 8, cutoff: int = 2048,
            checkpointing: bool = False) -> Path:
    shutil.copytree(REPO / "recipes" / "data", tmp_path / "data", dirs_exist_ok=True)
    shutil.copytree(REPO / "recipes" / "assets", tmp_path / "assets", dirs_exist_ok=True)
    (tmp_path / "r.yaml").write_text("\n".join([
        "name: est", f"model: {model}", "data:", "  datasets:", "    d: {path: data/arith_sft.jsonl}",
        f"  cutoff_len: {cutoff}", "stages:", "  - kind: sft", "finetuning:", f"  method: {method}", "train:",
        f"  global_batch_size: {batch}", f"  gradient_checkpointing: {str(checkpointing).lower()}",
        f"hardware: {hardware}", *extra, ""]))
    return tmp_path / "r.yaml"


LLAMA_70B = "{path: meta-llama/Llama-3.1-70B-Instruct, revision: 1605565b47bb9346c5515c34102e054115b4f98b}"


def test_full_70b_on_a_24gb_card_is_refused_with_the_numbers(tkc, tmp_path):
    recipe = _recipe(tmp_path, LLAMA_70B, "full", "rtx4090")
    code, _, err = tkc("compile", recipe, "-o", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert "MEM001" in err and "r.yaml:10" in err and "finetuning.method" in err   # at `method: full`
    assert "predicted to need 1239.4 GiB per device but rtx4090 has 21.6 GiB" in err
    assert "1217.8 GiB over" in err and "optimizer 525.7" in err
    assert "plans that fit: launch: {kind: deepspeed, zero_stage: 3, offload: true}" in err


def test_the_listed_alternatives_compile(tmp_path):
    with pytest.raises(CompileError) as info:
        compile_recipe(_recipe(tmp_path, LLAMA_70B, "full", "h100_80g_x8", batch=64))
    hint = info.value.diagnostics[0].hint or ""
    assert "launch: {kind: deepspeed, zero_stage: 3, offload: true}: 60.8 GiB" in hint
    assert "launch: {kind: deepspeed, zero_stage: 3}:" not in hint        # 16 bytes x 70B / 8 devices does not fit
    fixed = _recipe(tmp_path, LLAMA_70B, "full", "h100_80g_x8", "launch: {kind: deepspeed, zero_stage: 3, offload: "
                    "true}", batch=64)
    memory = compile_recipe(fixed).resolved["stages"][0]["estimate"]["memory"]
    assert memory["fits"] and f"{memory['needed_bytes'] / (1 << 30):.1f}" == "60.8"
    assert memory["offloaded_bytes"] > 16 * 70e9 / 8 * 0.9


def test_the_estimate_is_a_typed_plan_field(tmp_path):
    resolved = compile_recipe(_recipe(tmp_path, "{path: assets/tiny-qwen2, init: scratch}", "full", "cpu",
                                      cutoff=64)).resolved
    estimate = structure_plan(resolved).stages[0].estimate
    assert estimate is not None and estimate.memory is not None and estimate.time is not None
    assert estimate.basis == "model config.json" and estimate.params == estimate.trainable_params == 671616
    assert estimate.memory.optimizer_bytes == 8 * 671616 and estimate.memory.fits
    assert estimate.time.steps is None and estimate.time.peak_tflops == 0.1


def test_unknown_hub_model_has_no_estimate_and_still_compiles(tmp_path):
    resolved = compile_recipe(_recipe(tmp_path, "{path: acme/unknown-7b, family: llama, revision: " + "a" * 40 + "}", "lora",
                                      "rtx4090")).resolved
    stage = resolved["stages"][0]
    assert stage["estimate"]["memory"] is None and "acme/unknown-7b" in stage["estimate"]["missing"]
    assert stage["train"]["micro_batch_size"] >= 1   # the tokens-per-GB rule without a shape


def test_derived_micro_batch_is_the_largest_that_fits(tmp_path):
    model = "{path: meta-llama/Meta-Llama-3-8B-Instruct, revision: " + "b" * 40 + "}"
    small = _recipe(tmp_path, model, "lora", "rtx4090", batch=8, checkpointing=True)
    train = compile_recipe(small).resolved["stages"][0]["train"]
    roomy = _recipe(tmp_path, model, "lora", "h100_80g_x8", batch=64, checkpointing=True)
    assert compile_recipe(roomy).resolved["stages"][0]["train"]["micro_batch_size"] == 8
    assert train["micro_batch_size"] == 1 and train["gradient_accumulation_steps"] == 8


def test_explain_prints_the_breakdown_in_gib(tkc):
    code, out, _ = tkc("explain", REPO / "recipes" / "llama3_8b_dpo_h100_fsdp.yaml", "estimate")
    assert code == 0
    assert "estimate for stage 'dpo' (shape from catalog:model_shapes): 8,030,261,248 params" in out
    lines = out.splitlines()
    memory = next(line for line in lines if line.startswith("  memory per device: weights"))
    assert "GiB; total" in memory and "activations" in memory
    assert any(line.startswith("  needs ") and line.endswith(": fits") for line in lines)
    assert any("TFLOPS peak" in line and "s a step" in line for line in lines)
    assert json.loads(next(line for line in lines if line.startswith("stages.1.estimate.params")).split(" = ")[1]
                      .split()[0]) == 8030261248
