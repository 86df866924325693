"""Plans tkc cannot train through DeepSpeed are compile errors, at the recipe line that asked for them, all at once:
DS001 (ppo/grpo do not train through the engine), DS002 (ZeRO-3 and a stage that copies whole weights), DS003
(QLoRA under ZeRO-3), DS004 (ZeRO-3 and a rank-dependent number of forwards); the same stages under ZeRO-2,
or padded, compile."""

from __future__ import annotations

import json

RECIPE = """\
extends: [base/tiny_cpu.yaml]
name: ds
launch: {kind: deepspeed, zero_stage: 3}
stages:
  - kind: sft
    datasets: [arith_sft]
    finetuning:
      method: lora
      quantization: {bits: 4}
  - kind: dpo
    datasets: [arith_pref]
    finetuning:
      method: full
  - kind: kto
    datasets: [arith_kto]
  - kind: grpo
    datasets: [arith_sft]
    reward_function: format
    num_generations: 4
"""


def _lines(err: str, code: str) -> list[str]:
    return [line for line in err.splitlines() if f" {code} " in line]


def test_deepspeed_rules_are_reported_at_once(demo_copy, tkc):
    recipe = demo_copy / "ds.yaml"
    recipe.write_text(RECIPE)
    code, out, err = tkc("compile", recipe, "-o", demo_copy / "out")
    assert code == 2, (out, err)
    assert "Traceback" not in err and not (demo_copy / "out").exists()
    rollout = _lines(err, "DS001")
    assert len(rollout) == 1 and recipe.name + ":3:" in rollout[0] and "stage 'grpo' (grpo)" in rollout[0]
    copies = _lines(err, "DS002")  # dpo with full weights; kto is LoRA (base default): its reference is no copy
    assert len(copies) == 1 and "stage 'dpo' (dpo) cannot train under ZeRO-3" in copies[0], err
    qlora = _lines(err, "DS003")
    assert len(qlora) == 1 and "QLoRA cannot train under ZeRO-3" in qlora[0] and ":3:" in qlora[0]
    forwards = _lines(err, "DS004")  # cpu: padding auto is unpadded; sft packs its micro-batch into one forward
    assert [line.split("stage ")[1].split(":")[0] for line in forwards] == ["'dpo' (dpo)", "'kto' (kto)"], err


def test_zero3_with_padded_batches_compiles(demo_copy, tkc):
    recipe = demo_copy / "ds.yaml"
    recipe.write_text(RECIPE.replace("      quantization: {bits: 4}\n", "").replace("method: full", "method: lora")
                      .split("  - kind: grpo")[0] + "train:\n  padding: longest\n")
    code, out, err = tkc("compile", recipe, "--check")
    assert code == 0, err


def test_zero2_compiles_what_zero3_refuses(demo_copy, tkc):
    recipe = demo_copy / "ds.yaml"
    recipe.write_text(RECIPE.replace("zero_stage: 3", "zero_stage: 2").replace(
        "  - kind: grpo\n    datasets: [arith_sft]\n    reward_function: format\n    num_generations: 4\n", ""))
    code, out, err = tkc("compile", recipe, "-o", demo_copy / "out")
    assert code == 0, err
    config = json.loads((demo_copy / "out" / "launch" / "deepspeed.json").read_text())
    # tkc's own torch optimizer, offloaded or not; its own progress lines
    assert config["zero_force_ds_cpu_optimizer"] is False and config["steps_per_print"] is None
    assert config["zero_optimization"]["stage"] == 2
