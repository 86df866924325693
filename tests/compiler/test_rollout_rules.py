"""The ppo/grpo configuration errors the runtime used to raise minutes into a run are compiler rules: GRPO002 (beta > 0
needs LoRA) and ROLL001 (one process), reported with GRPO001 and BATCH001 all at once through `tkc compile`, each at
the recipe line that set it; and a grpo stage's resolved options hold every GRPO setting (no runtime defaults)."""

from __future__ import annotations

from pathlib import Path

from tkc.compiler import compile_recipe

REPO = Path(__file__).resolve().parents[2]

RECIPE = """\
extends: [base/tiny_cpu.yaml]
name: rules
hardware: a100_80g_x8
stages:
  - kind: sft
    datasets: [arith_sft]
  - kind: rm
    name: reward
    datasets: [arith_pref]
  - kind: ppo
    datasets: [arith_sft]
    reward_model: reward
  - kind: grpo
    datasets: [arith_sft]
    reward_function: format
    num_generations: 3
    beta: 0.04
    finetuning:
      method: full
"""


def _lines(err: str, code: str) -> list[str]:
    return [line for line in err.splitlines() if f" {code} " in line]


def test_rollout_rules_are_reported_at_once_at_their_recipe_lines(demo_copy, tkc):
    recipe = demo_copy / "rules.yaml"
    recipe.write_text(RECIPE)
    code, out, err = tkc("compile", recipe, "-o", demo_copy / "out")
    assert code == 2, (out, err)
    assert "Traceback" not in err and not (demo_copy / "out").exists()
    beta = _lines(err, "GRPO002")
    assert len(beta) == 1 and beta[0].startswith(f"{recipe}:17:") and "stages[3].beta" in beta[0]
    assert "needs finetuning method lora, not 'full'" in beta[0]
    one = _lines(err, "ROLL001")  # the ppo and the grpo stage, at `hardware:` (its profile launches 8 processes)
    assert len(one) == 2 and all(line.startswith(f"{recipe}:3:") for line in one), one
    assert "stage 'ppo' (ppo) runs in one process" in one[0] and "stage 'grpo' (grpo)" in one[1]
    assert _lines(err, "GRPO001")  # global batch 8 is not a multiple of num_generations 3, in the same run


def test_rollout_rules_pass_on_one_device_with_lora(demo_copy, tkc):
    recipe = demo_copy / "rules.yaml"
    recipe.write_text(RECIPE.replace("hardware: a100_80g_x8", "hardware: cpu").replace("num_generations: 3",
                      "num_generations: 4").replace("method: full", "method: lora"))
    code, out, err = tkc("compile", recipe, "--check")
    assert code == 0, err


def test_beta_zero_needs_no_lora_and_a_set_launch_is_where_roll001_points(tkc):
    recipe = REPO / "recipes" / "tiny_grpo.yaml"
    code, _, err = tkc("compile", recipe, "--check", "--set", "finetuning.method=full")
    assert code == 0, err
    code, _, err = tkc("compile", recipe, "--check", "--set", "hardware=h100_80g_x8", "--set", "launch.kind=torchrun")
    assert code == 2 and len(_lines(err, "ROLL001")) == 1 and "launch.kind" in _lines(err, "ROLL001")[0]


def test_grpo_stage_options_are_all_explicit():
    """The runtime keeps no GRPO defaults: every schema option is in the bundle, at the schema's value."""
    from tkc.schema.stages import GrpoStage, StageBase

    resolved = compile_recipe(REPO / "recipes" / "tiny_grpo.yaml").resolved
    options = next(s for s in resolved["stages"] if s["kind"] == "grpo")["options"]
    schema = {k: f.default for k, f in GrpoStage.model_fields.items() if k not in StageBase.model_fields and k != "kind"}
    assert set(schema) <= set(options)
    recipe_set = {"reward_function": "format", "num_generations": 4, "max_new_tokens": 8}
    assert {k: options[k] for k in schema} == {**schema, **recipe_set}
