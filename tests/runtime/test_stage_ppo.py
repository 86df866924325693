"""PPO: reward model from an rm stage, LoRA policy + value head, frozen reference; runs, saves, resumes."""

from __future__ import annotations

import json

import pytest

PPO = {"reward_model": "rm", "ppo_epochs": 2, "kl_coef": 0.05, "clip_range": 0.2, "max_new_tokens": 6,
       "temperature": 1.0}


def _plan(rt, tiny_pretrained):
    rm = rt.stage("rm", "rm", 0, ["arith_pref"], method="full", max_steps=2, global_batch_size=4,
                  micro_batch_size=4, save_steps=0)
    ppo = rt.stage("ppo", "ppo", 1, ["arith_sft"], method="lora", options=PPO, max_steps=3, global_batch_size=4,
                   micro_batch_size=4, save_steps=2, learning_rate=1e-3)
    plan = rt.resolved([rm, ppo], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=64)
    plan["datasets"]["arith_sft"]["max_samples"] = 16
    return plan


@pytest.mark.slow
def test_ppo_runs_saves_and_resumes_exactly(rt, tmp_path, tiny_pretrained):
    from tkc.runtime.run import run_bundle

    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained))
    assert run_bundle(bundle) == 0
    out = bundle / "outputs" / "ppo"
    assert (out / "DONE").exists() and (out / "model" / "adapter_model.safetensors").exists()
    assert (out / "model" / "value_head.safetensors").exists()
    recs = rt.steps(bundle, "ppo")
    assert len(recs) == 3 and all(abs(r["loss"]) < 1e6 and "reward" in r and "kl" in r for r in recs)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    # resume from the step-2 checkpoint reproduces step 3 exactly (sampling is seeded per step)
    (out / "DONE").unlink()
    lines = (out / "steps.jsonl").read_text().splitlines()
    assert run_bundle(bundle) == 0
    assert (out / "steps.jsonl").read_text().splitlines() == lines
