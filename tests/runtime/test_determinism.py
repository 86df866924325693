"""Same bundle, two processes: bit-identical per-step losses and identical final weights."""

from __future__ import annotations

import hashlib

import pytest


def _plan(rt, tiny_pretrained):
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method="lora", lora={"dropout": 0.1}, max_steps=6,
                  global_batch_size=8, micro_batch_size=4, save_steps=3, learning_rate=1e-2, neftune_alpha=5.0)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 24
    return plan


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_runs_are_bit_identical(rt, tmp_path, tiny_pretrained):
    """LoRA dropout and NEFTune noise included: the per-step RNG comes from (seed, step, rank)."""
    runs = []
    for name in ("a", "b"):
        bundle = rt.write_bundle(tmp_path / name, _plan(rt, tiny_pretrained))
        proc = rt.run_in_subprocess(bundle)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        losses = [(r["step"], r["loss"], r["grad_norm"]) for r in rt.steps(bundle, "sft") if "loss" in r]
        runs.append((losses, _sha(bundle / "outputs" / "sft" / "model" / "adapter_model.safetensors")))
    assert len(runs[0][0]) == 6
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_pt_from_scratch_two_runs_identical(rt, tmp_path):
    shas = []
    for name in ("a", "b"):
        st = rt.stage("pt", "pt", 0, ["arith_text"], max_steps=3, global_batch_size=4, micro_batch_size=2,
                      save_steps=0)
        plan = rt.resolved([st], cutoff_len=64)
        plan["datasets"]["arith_text"]["max_samples"] = 128  # short lines: enough 64-token chunks for 3 steps
        bundle = rt.write_bundle(tmp_path / name, plan)
        proc = rt.run_in_subprocess(bundle)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        shas.append((_sha(bundle / "outputs" / "pt" / "model" / "model.safetensors"),
                     [r["loss"] for r in rt.steps(bundle, "pt")]))
    assert shas[0] == shas[1]
