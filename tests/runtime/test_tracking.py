"""Experiment tracking: TensorBoard events per stage equal steps.jsonl, one value per step even after kill -9 + resume."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest

TRAIN = {"max_steps": 12, "global_batch_size": 8, "micro_batch_size": 4, "save_steps": 3, "save_total_limit": 2,
         "learning_rate": 1e-2, "eval_steps": 4}


def _events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in every event file, raw (no purging): tag -> [(step, value)] in file order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                value = float(tensor_util.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                found.setdefault(v.tag, []).append((event.step, value))
    return found


def _accumulated(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _f32(x: float) -> float:
    import numpy as np

    return float(np.float32(x))


def _plan(rt, tiny_pretrained, kind: str = "tensorboard"):
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method="lora", **TRAIN)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 48
    plan["data"]["val_size"] = 8  # 40 train rows (5 steps per epoch), 8 eval rows for eval_loss every 4 steps
    plan["tracking"] = {"kind": kind, "project": "tracking-test"}
    return plan


def test_scalars_are_tagged_and_non_numbers_skipped():
    from tkc.runtime.tracking import scalars

    rec = {"step": 3, "loss": 1.5, "lr": 1e-3, "grad_norm": 0.5, "eval_loss": 2.0, "tokens_seen": 96,
           "note": "x", "reward": None, "flag": True, "reward/rm": 0.25}
    assert scalars(rec) == {"train/loss": 1.5, "train/learning_rate": 1e-3, "train/grad_norm": 0.5,
                            "eval/loss": 2.0, "train/tokens_seen": 96.0, "train/reward/rm": 0.25}


@pytest.mark.parametrize("kind", ["wandb", "mlflow"])
def test_a_tracker_whose_package_is_missing_fails_before_training(rt, tmp_path, tiny_pretrained, kind):
    if importlib.util.find_spec(kind) is not None:
        pytest.skip(f"{kind} is installed here")
    from tkc.runtime.tracking import open_tracker

    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained, kind))
    ctx = rt.make_ctx(bundle)
    with pytest.raises(RuntimeError, match=f"tracking.kind is '{kind}' but the {kind} package is not installed"):
        open_tracker(ctx, ctx.stage_by_name("sft"))


def test_none_writes_nothing(rt, tmp_path, tiny_pretrained):
    from tkc.runtime.tracking import NullTracker, open_tracker

    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained, "none"))
    ctx = rt.make_ctx(bundle)
    assert isinstance(open_tracker(ctx, ctx.stage_by_name("sft")), NullTracker)
    assert not (bundle / "outputs").exists()


@pytest.mark.slow
def test_tensorboard_events_equal_steps_jsonl_once_per_step_after_kill_and_resume(rt, tmp_path, tiny_pretrained):
    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained))
    log_dir = bundle / "outputs" / "sft" / "tensorboard"
    proc = rt.run_in_subprocess(bundle, wait=False)
    rt.wait_for_step(bundle, 8, proc)  # past the step-6 checkpoint: steps 7-8 are logged twice unless handled
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before_kill = _events(log_dir)
    assert [s for s, _ in before_kill["train/loss"]][:8] == list(range(1, 9))  # flushed every step
    again = rt.run_in_subprocess(bundle)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from ckpt-6" in again.stdout

    records = rt.steps(bundle, "sft")
    losses = [(r["step"], _f32(r["loss"])) for r in records if "loss" in r]
    assert [s for s, _ in losses] == list(range(1, 13))
    raw = _events(log_dir)
    assert raw["train/loss"] == losses                       # every step exactly once, in every event file
    assert _accumulated(log_dir, "train/loss") == losses     # and as TensorBoard reads the directory
    assert raw["train/learning_rate"] == [(r["step"], _f32(r["lr"])) for r in records if "lr" in r]
    assert raw["train/grad_norm"] == [(r["step"], _f32(r["grad_norm"])) for r in records if "grad_norm" in r]
    evals = [(r["step"], _f32(r["eval_loss"])) for r in records if "eval_loss" in r]
    assert [s for s, _ in evals] == [4, 8, 12] and raw["eval/loss"] == evals
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_ppo_and_grpo_log_their_rewards_to_tensorboard(rt, tmp_path, tiny_pretrained):
    from tkc.runtime.run import run_bundle

    ppo = {"reward_model": "rm", "ppo_epochs": 1, "kl_coef": 0.05, "clip_range": 0.2, "max_new_tokens": 4,
           "temperature": 1.0}
    rm = rt.stage("rm", "rm", 0, ["arith_pref"], method="full", max_steps=1, global_batch_size=4,
                  micro_batch_size=4, save_steps=0)
    st = rt.stage("ppo", "ppo", 1, ["arith_sft"], method="lora", options=ppo, max_steps=2, global_batch_size=4,
                  micro_batch_size=4, save_steps=0)
    grpo = rt.stage("grpo", "grpo", 2, ["arith_sft"], method="lora", max_steps=2, global_batch_size=8,
                    micro_batch_size=4, gradient_accumulation_steps=2, save_steps=0,
                    options={"reward_model": "rm", "reward_function": None, "num_generations": 4, "max_new_tokens": 4})
    plan = rt.resolved([rm, st, grpo], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=64)
    plan["datasets"]["arith_sft"]["max_samples"] = 8
    plan["tracking"] = {"kind": "tensorboard", "project": "test"}
    bundle = rt.write_bundle(tmp_path / "run", plan)
    assert run_bundle(bundle) == 0
    raw = {}
    for stage in ("rm", "ppo", "grpo"):
        records = rt.steps(bundle, stage)
        raw[stage] = _events(bundle / "outputs" / stage / "tensorboard")
        assert raw[stage]["train/loss"] == [(r["step"], _f32(r["loss"])) for r in records], stage
    assert [s for s, _ in raw["ppo"]["train/reward"]] == [1, 2] and "train/kl" in raw["ppo"]
    assert [s for s, _ in raw["grpo"]["train/reward/rm_rm"]] == [1, 2]   # TRL's per-function reward, via tkc
