"""Every entry point that reads a bundle structures its resolved.json once (tkc.bundle.plan.load_plan): a plan that
does not fit is exit 2 with the key path, never a traceback. Bundles written by tkc.bundle, so verification
passes and only the plan is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

PPO = {"reward_model": "./rm_bundle", "ppo_epochs": 1, "kl_coef": 0.05, "clip_range": 0.2, "max_new_tokens": 4,
       "temperature": 1.0}
TKC = [sys.executable, "-m", "tkc.cli.main"]


def _broken_rm_bundle(rt, tmp_path, tiny_pretrained):
    rm = rt.stage("reward", "rm", 0, ["arith_pref"], max_steps=1, global_batch_size=4, micro_batch_size=4)
    plan = rt.resolved([rm], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=64)
    plan["stages"][0]["options"]["bogus"] = 1  # an unknown key: the manifest is recomputed, the plan does not fit
    return rt.write_bundle(tmp_path / "rm_bundle", plan)


def test_tkc_chat_on_a_plan_that_does_not_structure_is_exit_2(rt, tmp_path):
    plan = rt.resolved([rt.stage("sft", "sft", 0, ["arith_sft"])])
    plan["data"]["cutoff_len"] = "long"
    bundle = rt.write_bundle(tmp_path / "run", plan)
    proc = subprocess.run([*TKC, "chat", str(bundle)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "data.cutoff_len: expected int, got str" in proc.stderr


def test_tkc_data_inspect_on_a_plan_that_does_not_structure_is_exit_2(rt, tmp_path):
    plan = rt.resolved([rt.stage("sft", "sft", 0, ["arith_sft"])])
    del plan["stages"][0]["train"]["seed"]
    bundle = rt.write_bundle(tmp_path / "run", plan)
    proc = subprocess.run([*TKC, "data", "inspect", str(bundle)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "stages[0].train.seed: missing key" in proc.stderr


def test_open_context_refuses_the_plan_with_its_key_path(rt, tmp_path):
    from tkc.bundle.plan import PlanError
    from tkc.runtime.infer import open_context

    plan = rt.resolved([rt.stage("sft", "sft", 0, ["arith_sft"])])
    plan["model"]["trust_remote_code"] = "yes"
    with pytest.raises(PlanError, match=r"model\.trust_remote_code: expected bool, got str"):
        open_context(rt.write_bundle(tmp_path / "run", plan))


@pytest.mark.slow  # ~9 s: the ppo policy is built before its reward model is loaded
def test_ppo_whose_reward_bundle_plan_does_not_structure_is_exit_2(rt, tmp_path, tiny_pretrained, capsys):
    """The ppo bundle itself is fine; the rm bundle it was compiled against has an intact manifest and the pinned
    hash, but its resolved.json does not fit the plan: `tkc run` names that bundle and the key path, exit 2."""
    from tkc.runtime.context import EXIT_BAD_BUNDLE, load_bundle_hash
    from tkc.runtime.run import run_bundle

    rm = _broken_rm_bundle(rt, tmp_path, tiny_pretrained)
    ref = {"path": str(rm), "bundle_hash": load_bundle_hash(rm), "stage": "reward"}
    ppo = rt.stage("ppo", "ppo", 0, ["arith_sft"], method="lora", options={**PPO, "reward_bundle": ref},
                   max_steps=1, global_batch_size=4, micro_batch_size=4, save_steps=0)
    plan = rt.resolved([ppo], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=64)
    plan["datasets"]["arith_sft"]["max_samples"] = 8
    bundle = rt.write_bundle(tmp_path / "run", plan)
    capsys.readouterr()
    assert run_bundle(bundle) == EXIT_BAD_BUNDLE
    out = capsys.readouterr().out
    assert f"reward bundle {rm}: stages[0].options: unknown key bogus" in out, out
    assert not (bundle / "outputs" / "ppo" / "steps.jsonl").exists()
