"""Each stage's device comes from the plan: compiled from the hardware profile, checked by `tkc run` before any stage
starts (a GPU bundle on this CPU machine is refused, never run on the CPU), and read by the runtime's device function."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs
import pytest
import torch

from tkc.compiler import compile_recipe
from tkc.runtime import device

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, hardware: str) -> Path:
    shutil.copytree(REPO / "recipes" / "data", tmp_path / "data", dirs_exist_ok=True)
    shutil.copytree(REPO / "recipes" / "assets", tmp_path / "assets", dirs_exist_ok=True)
    (tmp_path / "r.yaml").write_text("\n".join([
        "name: dev", "model: {path: assets/tiny-qwen2, init: scratch}", "data:", "  datasets:",
        "    d: {path: data/arith_sft.jsonl}", "    e: {path: data/arith_eval.jsonl}", "  cutoff_len: 64", "stages:",
        "  - {kind: sft, datasets: [d]}", "  - {kind: eval, name: ev, datasets: [e]}", "finetuning: {method: lora}",
        f"hardware: {hardware}", ""]))
    return tmp_path / "r.yaml"


INLINE = "{{accelerator: {}, devices_per_node: 1, nodes: 1, memory_gb: 80, supports_bf16: true, supports_fp16: true}}"


@pytest.mark.parametrize(("hardware", "kind", "source"), [
    ("cpu", "cpu", "profile:cpu"),
    ("a100_80g_x8", "cuda", "profile:a100_80g_x8"),
    ("mi300x_x8", "cuda", "profile:mi300x_x8"),          # ROCm builds of torch address AMD GPUs as cuda
    ("ascend_910b_x8", "npu", "profile:ascend_910b_x8"),
    (INLINE.format("rocm"), "cuda", "recipe"),
    (INLINE.format("npu"), "npu", "recipe"),
])
def test_every_stage_names_the_device_of_its_hardware(tmp_path, hardware, kind, source):
    compiled = compile_recipe(_recipe(tmp_path, hardware))
    stages = compiled.resolved["stages"]
    assert [s["device"] for s in stages] == [kind, kind]      # the training stage and the eval stage
    assert compiled.plan.provenance["stages.0.device"] == source
    assert compiled.plan.provenance["stages.1.device"] == source


def _bundle(rt, tmp_path, kind: str, deterministic: bool = True) -> Path:
    st = rt.stage("sft", "sft", 0, ["arith_sft"], max_steps=1, deterministic=deterministic)
    st["device"] = kind
    plan = rt.resolved([st])
    plan["hardware"].update(accelerator=kind, profile="inline", supports_bf16=True)
    return rt.write_bundle(tmp_path / f"run_{kind}", plan)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_cuda_bundle_is_refused_here_before_any_stage_starts(rt, tmp_path, capsys):
    from tkc.runtime.context import EXIT_ENV_MISMATCH
    from tkc.runtime.run import run_bundle

    bundle = _bundle(rt, tmp_path, "cuda")
    assert run_bundle(bundle) == EXIT_ENV_MISMATCH
    out = capsys.readouterr().out
    assert "refusing to run: stage 'sft': this bundle runs on cuda, but torch reports no CUDA/ROCm GPU" in out
    assert "hardware: cpu" in out
    assert not (bundle / "outputs").exists()  # nothing trained, nothing written: not a silent CPU run


def test_the_device_check(rt, tmp_path, monkeypatch):
    """check_devices: cpu passes; a missing npu or GPU is named; a deterministic cuda stage needs
    CUBLAS_WORKSPACE_CONFIG (checked with a GPU count pretended, as this machine has none)."""
    from tkc.bundle.plan import load_plan

    cpu = load_plan(_bundle(rt, tmp_path, "cpu"))
    assert device.check_devices(cpu, cpu.stages, env={}) is None
    assert device.stage_device(cpu, cpu.stages[0], rt_dist()) == torch.device("cpu")
    npu = load_plan(_bundle(rt, tmp_path, "npu"))
    assert "runs on npu, but no Ascend NPU is visible" in device.check_devices(npu, npu.stages, env={})
    cuda = load_plan(_bundle(rt, tmp_path, "cuda"))
    monkeypatch.setattr(device, "_count", lambda kind: 2)
    problem = device.check_devices(cuda, cuda.stages, env={})
    assert "deterministic on cuda, which needs CUBLAS_WORKSPACE_CONFIG" in problem
    assert device.check_devices(cuda, cuda.stages, env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}) is None
    assert "only 2 cuda device(s)" in device.check_devices(cuda, cuda.stages, local_rank=2, env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    relaxed = load_plan(_bundle(rt, tmp_path, "cuda", deterministic=False))
    assert device.check_devices(relaxed, relaxed.stages, env={}) is None
    # the rank's device from the stage's field (local rank 1 -> cuda:1), whatever the profile says
    assert device.stage_device(cuda, cuda.stages[0], rt_dist(local_rank=1)) == torch.device("cuda", 1)
    as_cpu = attrs.evolve(cuda.stages[0], device="cpu")
    assert device.stage_device(cuda, as_cpu, rt_dist()) == torch.device("cpu")


def rt_dist(local_rank: int = 0):
    from tkc.runtime.dist import DistInfo

    return DistInfo(rank=local_rank, world_size=max(1, local_rank + 1), local_rank=local_rank)
