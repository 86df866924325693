"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo, DS_ACCELERATOR=cpu): two ranks started by the bundle's own launch
script train what one plain process trains on the same global batch; the saved model reloads in plain
transformers / peft with the engine's logits; a ZeRO-3 run killed with SIGKILL resumes to the same losses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="deepspeed not installed (lockfiles/dev.txt installs it)")

# Two processes summing gradients in another order than one process: float32 round-off only (measured: < 1e-6
# relative on these 4-6 steps); a wrong loss scale or a missed all-reduce is off by percents.
REL = 1e-4
STEPS = 6  # checkpoints at steps 2 and 4; the kill test stops a run after step 3


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _plan(rt, model: Path, *, method: str, zero: int | None, world: int, offload: bool = False,
          steps: int = STEPS):
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method=method, max_steps=steps, global_batch_size=8,
                  micro_batch_size=2, gradient_accumulation_steps=4 // world, world_size=world,
                  save_steps=2, learning_rate=1e-3, lora={"plus_ratio": 4.0})
    # the compiler's estimate sizes DeepSpeed's buckets (tkc.compiler.launch.deepspeed_config)
    st["estimate"] = {"basis": "model config.json", "missing": "memory and time: not estimated here",
                      "params": 672_640, "trainable_params": 672_640, "memory": None, "time": None}
    plan = rt.resolved([st], model_path=str(model), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 48
    if zero is not None:
        plan["launch"] |= {"kind": "deepspeed", "nproc_per_node": world, "world_size": world, "zero_stage": zero,
                           "offload": offload}
    return plan


def _write(rt, folder: Path, plan: dict) -> Path:
    """A bundle with its rendered launch files (launch/01-sft.sh, launch/deepspeed.json), hashed like tkc's."""
    from tkc.bundle import write_bundle
    from tkc.compiler.launch import render_launch
    from tkc.runtime.tiny import QWEN2_5_CHAT_TEMPLATE

    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    contents = {"resolved.json": text.encode(), "template/chat_template.jinja": QWEN2_5_CHAT_TEMPLATE.encode()}
    contents |= {path: body.encode() for path, body in render_launch(plan).items()}
    write_bundle(folder, contents, {"source_root": str(rt.RECIPES)}, "test", force=True)
    return folder


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "MASTER_PORT": _free_port(),
                  "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"}


def _launch(bundle: Path, *, wait: bool = True):
    script = next((bundle / "launch").glob("*-sft.sh"))
    cmd = ["bash", str(script)]
    if not wait:
        return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    return out


def _process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _losses(rt, bundle: Path) -> list[float]:
    return [r["loss"] for r in rt.steps(bundle, "sft") if "loss" in r]


@pytest.fixture(scope="module")
def reference(rt_module, tiny_pretrained, tmp_path_factory):
    """One plain process per method (launch.kind local): the losses the DeepSpeed runs must reproduce."""
    out = {}
    for method in ("full", "lora"):
        bundle = _write(rt_module, tmp_path_factory.mktemp(f"one-{method}") / "b",
                        _plan(rt_module, tiny_pretrained, method=method, zero=None, world=1))
        done = rt_module.run_in_subprocess(bundle, timeout=300, env={"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stdout + done.stderr
        out[method] = bundle
    return out


def _reload_logits(bundle: Path, base: Path) -> torch.Tensor:
    """The saved model as a user loads it: plain transformers, plus peft for an adapter."""
    from transformers import AutoModelForCausalLM

    model_dir = bundle / "outputs" / "sft" / "model"
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(model_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        return model.eval()(input_ids=torch.arange(3, 40).unsqueeze(0)).logits


@pytest.fixture(scope="module")
def ds_runs(rt_module, tiny_pretrained, tmp_path_factory):
    """Two-rank DeepSpeed runs through the bundle's launch script, made on first use and shared (the
    uninterrupted ZeRO-3 run is also the kill test's reference)."""
    runs: dict[tuple[int, str, bool], Path] = {}

    def get(zero: int, method: str, offload: bool = False) -> Path:
        key = (zero, method, offload)
        if key not in runs:
            plan = _plan(rt_module, tiny_pretrained, method=method, zero=zero, world=2, offload=offload)
            runs[key] = _write(rt_module, tmp_path_factory.mktemp(f"z{zero}-{method}") / "b", plan)
            _launch(runs[key])
        return runs[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("zero", "method", "offload"), [
    (2, "lora", False), (2, "full", True), (3, "lora", True), (3, "full", False)])  # offload: tkc's torch AdamW
def test_two_ranks_match_one_process(rt, tiny_pretrained, reference, ds_runs, zero, method, offload):
    bundle = ds_runs(zero, method, offload)
    losses = _losses(rt, bundle)
    assert len(losses) == STEPS
    assert losses == pytest.approx(_losses(rt, reference[method]), rel=REL)
    config = json.loads((bundle / "launch" / "deepspeed.json").read_text())["zero_optimization"]
    assert (config["stage"], config["offload_optimizer"]["device"]) == (zero, "cpu" if offload else "none")
    record = json.loads((bundle / "outputs" / "sft" / "run_record.json").read_text())
    assert record["world_size"] == 2
    ckpt = bundle / "outputs" / "sft" / "checkpoints" / "ckpt-4"
    shards = sorted(p.name for p in (ckpt / "deepspeed").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # every rank wrote its own ZeRO shard into the one checkpoint
    assert json.loads((ckpt / "COMPLETE").read_text())["files"].keys() >= {f"deepspeed/{s}" for s in shards}
    # what a user reloads (plain transformers / peft) predicts what the one-process run's model predicts
    torch.testing.assert_close(_reload_logits(bundle, tiny_pretrained),
                               _reload_logits(reference[method], tiny_pretrained), rtol=1e-3, atol=1e-4)
    if method == "lora":  # the adapter only, not the gathered base weights
        assert not (bundle / "outputs" / "sft" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_zero3_killed_mid_run_resumes_to_the_same_losses(rt, tmp_path, tiny_pretrained, ds_runs):
    whole = ds_runs(3, "full")
    killed = _write(rt, tmp_path / "killed", _plan(rt, tiny_pretrained, method="full", zero=3, world=2))
    proc = _launch(killed, wait=False)
    rt.wait_for_step(killed, 3, proc, timeout=300)
    for pid in _process_tree(proc.pid):  # the script, torchrun and both ranks (torchrun gives each rank its own
        with contextlib.suppress(ProcessLookupError):  # session): none has a chance to checkpoint
            os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0
    assert not (killed / "outputs" / "sft" / "DONE").exists()
    assert (killed / "outputs" / "sft" / "checkpoints" / "ckpt-2" / "COMPLETE").exists()
    out = _launch(killed)
    assert "resuming from ckpt-" in out.stdout + out.stderr
    assert _losses(rt, killed) == _losses(rt, whole)  # bit for bit, the steps after the resume included


@pytest.mark.slow
def test_zero3_lora_stage_after_a_lora_stage_runs_in_one_process(tmp_path, monkeypatch):
    # a stage that starts from an earlier LoRA stage merges that adapter into a base built under zero.Init (each
    # rank's shard: 0-size placeholders); peft's plain merge raised 'size of tensor a (0) must match'. `tkc run`
    # alone (no torchrun): a group of one
    import shutil

    from tkc.bundle.io import write_bundle
    from tkc.compiler import compile_recipe
    from tkc.runtime.run import run_bundle

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for part in ("assets", "data", "base"):
        shutil.copytree(recipes / part, tmp_path / "src" / part)
    (tmp_path / "src" / "r.yaml").write_text(
        "extends: [base/tiny_cpu.yaml]\nname: ds3\ndata:\n  datasets:\n"
        "    arith_sft: {path: data/arith_sft.jsonl, format: alpaca, max_samples: 16}\n"
        "    arith_pref: {path: data/arith_pref.jsonl, format: alpaca, kind: preference, max_samples: 8}\n"
        "stages:\n  - {kind: sft, datasets: [arith_sft]}\n"
        "  - {kind: dpo, datasets: [arith_pref], train: {padding: longest}}\n"
        "train: {max_steps: 2, save_steps: 2}\nlaunch: {kind: deepspeed, zero_stage: 3}\n", encoding="utf-8")
    compiled = compile_recipe(tmp_path / "src" / "r.yaml")
    out = tmp_path / "run"
    write_bundle(out, compiled.files, {"source_root": str(compiled.source_root)}, compiled.plan.inputs.tkc_version,
                 False, compiled.sources)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_bundle(out) == 0
    assert (out / "outputs" / "dpo" / "model" / "adapter_config.json").is_file()
