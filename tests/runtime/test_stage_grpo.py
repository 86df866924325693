"""GRPO (TRL's GRPOTrainer): built-in and rm rewards, trains the adapter, same seed -> same steps, exact resume
(from a checkpoint and after a stop request), and the shipped recipes/tiny_grpo.yaml end to end."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _opts(**kw) -> dict:
    """A grpo stage's options as the compiler resolves them: every schema option, at its default unless given."""
    from tkc.schema.stages import GrpoStage, StageBase

    schema = {k: f.default for k, f in GrpoStage.model_fields.items() if k not in StageBase.model_fields and k != "kind"}
    return {**schema, "reward_bundle": None, "num_generations": 4, "max_new_tokens": 6, **kw}


def _grpo(rt, index: int, *, init_from=None, **opts):
    return rt.stage("grpo", "grpo", index, ["arith_sft"], method="lora", init_from=init_from, options=_opts(**opts),
                    max_steps=4, global_batch_size=8, micro_batch_size=4, gradient_accumulation_steps=2,
                    save_steps=2, learning_rate=1e-2)


def _plan(rt, tiny_pretrained, stages):
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained", cutoff_len=64)
    plan["datasets"]["arith_sft"]["max_samples"] = 16
    return plan


@pytest.fixture
def wired(monkeypatch):
    """Run the stage through run_bundle whether or not the lead has wired grpo into STAGE_MODULES yet."""
    from tkc.runtime import run

    monkeypatch.setitem(run.STAGE_MODULES, "grpo", "grpo")
    return run.run_bundle


def _adapter(bundle: Path, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(bundle / "outputs" / stage / "model" / "adapter_model.safetensors"))


def test_builtin_rewards():
    from tkc.runtime import rewards

    stop = 99
    em = rewards.make("exact_match", max_new_tokens=8, stop_ids=[stop])
    assert em(["p", "p"], [" 10 ", "11"], [[1, stop], [2, stop]], reference=["10", "10"]) == [1.0, 0.0]
    fmt = rewards.make("format", max_new_tokens=8, stop_ids=[stop])
    assert fmt(["p"] * 3, ["10", "10", " "], [[1, stop], [1, 2], [5, stop]]) == [1.0, 0.0, 0.0]
    lp = rewards.make("length_penalty", max_new_tokens=8, stop_ids=[stop])
    assert lp(["p"] * 2, ["a", "b"], [[1, stop], [1] * 8]) == [-1 / 8, -1.0]
    assert em(["p"], [[{"role": "assistant", "content": "7"}]], [[7]], reference=["7"]) == [1.0]  # chat completions
    with pytest.raises(ValueError, match="exact_match, format, length_penalty"):
        rewards.make("nope", max_new_tokens=8, stop_ids=[stop])


def _rm(rt):
    return rt.stage("rm", "rm", 0, ["arith_pref"], method="full", max_steps=2, global_batch_size=4,
                    micro_batch_size=4, gradient_accumulation_steps=1, save_steps=0)


@pytest.mark.slow
def test_grpo_function_reward_runs_with_explicit_config(rt, tmp_path, tiny_pretrained, wired):
    """A built-in reward function. (On this random tiny model every completion runs to max_new_tokens, so
    length_penalty is -1 for all: zero advantages, zero loss; the training signal is tested with the rm below.)"""
    grpo = _grpo(rt, 0, reward_function="length_penalty")
    grpo["train"].update(max_steps=2, save_steps=0)
    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained, [grpo]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wired(bundle) == 0
    # transformers' deprecated gradient-checkpointing names, read by TRL and peft, print nothing on a run
    assert not [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    out = bundle / "outputs" / "grpo"
    assert (out / "DONE").exists() and (out / "model" / "adapter_model.safetensors").exists()
    recs = rt.steps(bundle, "grpo")
    assert [r["step"] for r in recs] == [1, 2]
    assert all(math.isfinite(r["loss"]) and -1.0 <= r["reward"] <= 0.0 for r in recs), recs
    assert json.loads((out / "metrics.json").read_text())["reward"] == "length_penalty"
    cfg = json.loads((out / "grpo_config.json").read_text())
    assert (cfg["bf16"], cfg["fp16"], cfg["activation_checkpointing"], cfg["use_cpu"], cfg["seed"], cfg["report_to"]) \
        == (False, False, False, True, 42, [])
    assert (cfg["num_generations"], cfg["max_completion_length"], cfg["beta"], cfg["loss_type"]) == (4, 6, 0.0, "dapo")


@pytest.mark.slow
def test_grpo_rm_reward_trains_same_seed_same_steps_and_exact_resume(rt, tmp_path, tiny_pretrained, wired):
    plan = _plan(rt, tiny_pretrained, [_rm(rt), _grpo(rt, 1, reward_model="rm")])
    a, b = rt.write_bundle(tmp_path / "a", plan), rt.write_bundle(tmp_path / "b", plan)
    assert wired(a) == 0 and wired(b) == 0
    out = a / "outputs" / "grpo"
    recs = rt.steps(a, "grpo")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward"]) and r["reward_std"] > 0 for r in recs), recs
    assert all(r["grad_norm"] > 0 for r in recs), recs  # a continuous rm score: every group has an advantage
    final = _adapter(a, "grpo")
    lora_b = [v for k, v in final.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: it moved
    assert json.loads((out / "metrics.json").read_text())["reward"] == "rm:rm"
    # same seed, fresh bundle -> identical per-step losses and rewards (CPU sampling is seeded by TRL's set_seed)
    assert rt.steps(b, "grpo") == recs
    # resume from the step-2 checkpoint reproduces steps 3-4 and the final adapter exactly
    assert (out / "checkpoints" / "ckpt-2" / "state.json").is_file()  # checkpoint.py's naming and state
    shutil.rmtree(out / "checkpoints" / "ckpt-4")
    (out / "DONE").unlink()
    assert wired(a) == 0
    assert rt.steps(a, "grpo") == recs
    resumed = _adapter(a, "grpo")
    assert all(v.equal(resumed[k]) for k, v in final.items())
    assert json.loads((out / "run_record.json").read_text())["resumed_from_step"] == 2


@pytest.mark.slow
def test_tiny_grpo_recipe_runs(tmp_path, wired, monkeypatch):
    """recipes/tiny_grpo.yaml compiled by the compiler: sft then grpo on the real data pipeline."""
    from tkc.bundle.io import write_bundle
    from tkc.compiler.pipeline import compile_recipe

    monkeypatch.delenv("TKC_TEST_STANDIN_DATA", raising=False)
    compiled = compile_recipe(RECIPES / "tiny_grpo.yaml", ["train.max_steps=4", "stages.1.train.max_steps=2"])
    bundle = tmp_path / "tiny_grpo"
    write_bundle(bundle, compiled.files, {"source_root": str(compiled.source_root)},
                 compiled.plan.inputs.tkc_version, True, compiled.sources)
    assert wired(bundle) == 0
    for name in ("sft", "grpo"):
        assert (bundle / "outputs" / name / "DONE").exists(), name
    recs = [json.loads(x) for x in (bundle / "outputs" / "grpo" / "steps.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(math.isfinite(r["loss"]) for r in recs)
    assert wired(bundle) == 0  # every stage DONE: skipped


@pytest.mark.slow
def test_grpo_stop_request_checkpoints_and_resumes_exactly(rt, tmp_path, tiny_pretrained, wired):
    """SIGTERM sets ctx.stop_requested: checkpoint at the current step, exit 143; `tkc run` again finishes the
    stage with the same steps as an uninterrupted run."""
    from tkc.runtime.context import EXIT_SIGTERM
    from tkc.runtime.run import seed_everything
    from tkc.runtime.stages import grpo

    plan = _plan(rt, tiny_pretrained, [_rm(rt), _grpo(rt, 1, reward_model="rm")])
    plan["stages"][1]["train"]["save_steps"] = 0  # only the stop request writes a checkpoint
    whole, cut = rt.write_bundle(tmp_path / "whole", plan), rt.write_bundle(tmp_path / "cut", plan)
    assert wired(whole) == 0 and wired(cut, stage="rm") == 0
    ctx = rt.make_ctx(cut)
    ctx.stop_requested = True
    seed_everything(42, True)
    assert grpo.run(ctx, ctx.stage_by_name("grpo")) == EXIT_SIGTERM
    out = cut / "outputs" / "grpo"
    assert (out / "checkpoints" / "ckpt-1" / "COMPLETE").is_file() and not (out / "DONE").exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert wired(cut) == 0
    assert rt.steps(cut, "grpo") == rt.steps(whole, "grpo")
    assert all(r["grad_norm"] > 0 for r in rt.steps(whole, "grpo"))


def _published(root: Path, step: int, bundle_hash: str) -> Path:
    """A trainer-style checkpoint saved the way the grpo stage saves one."""
    from tkc.runtime import checkpoint

    def write(staging: Path) -> Path:
        (staging / f"checkpoint-{step}").mkdir(parents=True)
        (staging / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        return staging / f"checkpoint-{step}"

    return checkpoint.save_staged(root, step, write, keep=0,
                                  state={"bundle_hash": bundle_hash, "stage": "grpo", "step": step})


def test_resume_point_follows_checkpoint_rules(rt, tmp_path):
    """Every stage's checkpoint rules: unpublished staging is ignored, a corrupt newest one is set aside (kept) and
    the one before it used, another bundle's checkpoint is refused (exit 3)."""
    from tkc.runtime.context import BundleChanged
    from tkc.runtime.stages.grpo import resume_point

    ctx = rt.make_ctx(rt.write_bundle(tmp_path / "run", rt.resolved([_grpo(rt, 0)])))
    stage = ctx.stage_by_name("grpo")
    root = tmp_path / "checkpoints"
    assert resume_point(ctx, stage, root) == (None, 0)
    two, four = _published(root, 2, ctx.bundle_hash), _published(root, 4, ctx.bundle_hash)
    (root / ".tmp-ckpt-6" / "checkpoint-6").mkdir(parents=True)  # a save that died before publish
    assert resume_point(ctx, stage, root) == (four, 4)
    (four / "trainer_state.json").write_text(json.dumps({"global_step": 5}))  # same size, other bytes
    assert resume_point(ctx, stage, root) == (two, 2)
    assert (root / "ckpt-4.corrupt-1" / "trainer_state.json").is_file()
    _published(root, 8, "0" * 64)
    with pytest.raises(BundleChanged, match="bundle 000000000000"):
        resume_point(ctx, stage, root)


def test_grpo_config_maps_the_resolved_stage(rt, tmp_path):
    """bundle -> GRPOConfig, no training: precision off on CPU, the stage's checkpointing, lengths and options."""
    from tkc.bundle.plan_converter import converter
    from tkc.bundle.plan_stage import ResolvedStage
    from tkc.runtime.stages.grpo_config import config_fields, config_record, grpo_config

    tree = _grpo(rt, 0, reward_function="format", beta=0.04, top_k=5, loss_type="grpo", max_new_tokens=7)
    tree["train"].update(gradient_checkpointing=True, save_steps=0)
    stage = converter.structure(tree, ResolvedStage)  # the typed stage `tkc run` hands the grpo stage
    args = grpo_config(stage, accelerator="cpu", trust_remote_code=False, total=3, output_dir=tmp_path / "ck")
    assert (args.bf16, args.fp16, args.use_cpu, args.activation_checkpointing) == (False, False, True, True)
    assert (args.max_steps, args.max_completion_length, args.num_generations, args.steps_per_generation) == (3, 7, 4, 2)
    assert (args.beta, args.top_k, args.loss_type, args.temperature, args.save_strategy) == \
        (0.04, 5, "grpo", 1.0, "no")
    assert (args.per_device_train_batch_size, args.seed, args.report_to) == (4, 42, [])
    tree["train"].update(precision="bf16", gradient_checkpointing=False)
    gpu = config_fields(converter.structure(tree, ResolvedStage), accelerator="cuda", trust_remote_code=False, total=3, output_dir=tmp_path / "ck")
    assert [gpu[k] for k in ("bf16", "fp16", "use_cpu", "activation_checkpointing")] == [True, False, False, False]
    record = config_record(args)
    assert "output_dir" not in record and record["max_completion_length"] == 7


@pytest.mark.slow
def test_grpo_save_that_fails_midway_leaves_the_previous_checkpoint(rt, tmp_path, tiny_pretrained, wired,
                                                                     monkeypatch, capsys):
    """A save that dies after the weights and before the rest (a full disk, a kill) publishes nothing: the step-1
    checkpoint stays the newest complete one, and `tkc run` again resumes from it."""
    from transformers import Trainer

    from tkc.runtime.context import EXIT_SAVE_FAILED

    grpo = _grpo(rt, 0, reward_function="length_penalty")
    grpo["train"].update(max_steps=3, save_steps=1, save_total_limit=0)
    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained, [grpo]))
    real = Trainer._save_rng_state

    def dies_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise OSError(28, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_at_step_2)
    assert wired(bundle) == EXIT_SAVE_FAILED  # as every stage's failed save: named, no traceback
    assert "No space left" in capsys.readouterr().out
    ckpts = bundle / "outputs" / "grpo" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("ckpt-")) == ["ckpt-1"]
    assert (ckpts / "ckpt-1" / "COMPLETE").is_file() and not list(ckpts.glob(".tmp-*"))
    monkeypatch.setattr(Trainer, "_save_rng_state", real)
    assert wired(bundle) == 0
    record = json.loads((bundle / "outputs" / "grpo" / "run_record.json").read_text())
    assert record["resumed_from_step"] == 1
    assert [r["step"] for r in rt.steps(bundle, "grpo")] == [1, 2, 3]
