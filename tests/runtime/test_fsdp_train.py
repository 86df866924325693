"""FSDP2 on CPU (gloo, 2 ranks of 1 thread) started by the bundle's own launch script: the same losses as one process
on the same global batch, weights that reload in plain transformers / peft with the same logits, exact resume after
kill -9.

Tolerance against one process: rel 1e-5 on every step's loss (measured: about 3e-8; the ranks sum the same rows in
another order and FSDP reduces gradients per micro-batch), 1e-4 on the reloaded logits. Resume is exact: the
interrupted run's losses and final weights equal the uninterrupted FSDP run's, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

STEPS = 8
# global batch 8 = 2 ranks x micro 2 x accumulation 2 (one process: micro 2 x accumulation 4); 5 eval rows: the
# ranks get 3 and 2 (uneven eval shares: every rank must still run as many sharded forwards)
TRAIN = {"max_steps": STEPS, "global_batch_size": 8, "micro_batch_size": 2, "save_steps": 2, "save_total_limit": 2,
         "learning_rate": 1e-3, "eval_steps": 4}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _bundle(rt, out: Path, tiny: Path, method: str, world: int) -> Path:
    """A hand-written bundle with the launch files the compiler renders for it (torchrun + accelerate_fsdp.yaml)."""
    from tkc.bundle import write_bundle
    from tkc.compiler.launch import render_launch
    from tkc.runtime.tiny import QWEN2_5_CHAT_TEMPLATE

    st = rt.stage("sft", "sft", 0, ["arith_sft"], method=method, world_size=world,
                  gradient_accumulation_steps=4 // world, **TRAIN)
    plan = rt.resolved([st], model_path=str(tiny), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 45
    plan["data"]["val_size"] = 5
    # full: the family's class; LoRA: a family that names none (the runtime falls back to the layer list)
    plan["model"]["decoder_layer"] = "Qwen2DecoderLayer" if method == "full" else None
    if world > 1:
        plan["launch"].update(kind="fsdp", nproc_per_node=world, world_size=world)
    contents = {"resolved.json": (json.dumps(plan, sort_keys=True, separators=(",", ":")) + "\n").encode(),
                "template/chat_template.jinja": QWEN2_5_CHAT_TEMPLATE.encode(),
                **{k: v.encode() for k, v in render_launch(plan).items()}}
    write_bundle(out, contents, {"source_root": str(rt.RECIPES)}, "test", force=True)
    return out


def _launch(bundle: Path, *, wait: bool = True):
    """bash launch/00-sft.sh, as a user runs it (torchrun for the fsdp bundle), in its own process group."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "MASTER_PORT": _free_port(),
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"}
    cmd = ["bash", str(bundle / "launch" / "00-sft.sh")]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun starts its ranks in sessions of their own)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree, grew = tree | more, bool(more)
    for p in sorted(tree, reverse=True):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and p != pid for p in tree):
        time.sleep(0.05)


def _losses(rt, bundle: Path) -> list[float]:
    return [r["loss"] for r in rt.steps(bundle, "sft") if "loss" in r]


def _eval_losses(rt, bundle: Path) -> list[float]:
    return [r["eval_loss"] for r in rt.steps(bundle, "sft") if "eval_loss" in r]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(rt_module, tiny_pretrained, tmp_path_factory):
    """{(method, world): (bundle, stdout)} after a whole run: full and LoRA SFT, one process and 2-rank FSDP2."""
    root = tmp_path_factory.mktemp("fsdp")
    done = {}
    for method in ("full", "lora"):
        for world in (1, 2):
            bundle = _bundle(rt_module, root / f"{method}-{world}", tiny_pretrained, method, world)
            done[method, world] = bundle, _launch(bundle).stdout
    return done


def _logits(model_dir: Path, base: Path | None) -> torch.Tensor:
    """Logits of the saved model (a LoRA adapter: on `base`) loaded by plain transformers / peft."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base or model_dir)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir))
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_fsdp_ranks_match_one_process(rt, runs, tiny_pretrained, method):
    (one, _), (two, log) = runs[method, 1], runs[method, 2]
    fallback = "fsdp: the model's family names no decoder_layer; sharding the 4 modules (Qwen2DecoderLayer)"
    assert (fallback in log) == (method == "lora"), log[-3000:]
    a, b = _losses(rt, one), _losses(rt, two)
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=1e-5)
    assert _eval_losses(rt, two) == pytest.approx(_eval_losses(rt, one), rel=1e-5)
    assert len(_eval_losses(rt, two)) == 2  # eval at step 4 and at the end, with 3 and 2 rows on the ranks
    ckpts = two / "outputs" / "sft" / "checkpoints"
    shards = sorted(p.relative_to(ckpts).as_posix() for p in ckpts.glob("ckpt-*/sharded/*.distcp"))
    assert shards == [f"ckpt-{s}/sharded/__{r}_0.distcp" for s in (4, 6) for r in (0, 1)]  # a shard per rank
    record = json.loads((two / "outputs" / "sft" / "run_record.json").read_text())
    assert record["world_size"] == 2
    saved_one, saved_two = one / "outputs" / "sft" / "model", two / "outputs" / "sft" / "model"
    files = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    from safetensors.torch import load_file

    wa, wb = load_file(str(saved_one / files)), load_file(str(saved_two / files))
    assert wa.keys() == wb.keys()  # the same names (a tied lm_head saved once), adapter weights only for LoRA
    base = tiny_pretrained if method == "lora" else None
    before = _logits(tiny_pretrained, None)
    la, lb = _logits(saved_one, base), _logits(saved_two, base)
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(lb, before, atol=1e-3)  # it trained: the reloaded weights are not the start weights


@pytest.mark.slow
def test_fsdp_kill_9_mid_run_then_resume_is_exact(rt, runs, tmp_path, tiny_pretrained):
    reference = runs["full", 2][0]
    bundle = _bundle(rt, tmp_path / "killed", tiny_pretrained, "full", 2)
    proc = _launch(bundle, wait=False)
    try:
        rt.wait_for_step(bundle, 3, proc)  # past the step-2 checkpoint, before the eval at step 4
    finally:
        _kill_tree(proc.pid)  # both ranks and torchrun, as a node that dies
        killed = proc.communicate()[0]
    assert not (bundle / "outputs" / "sft" / "DONE").exists(), killed[-3000:]
    out = _launch(bundle)
    assert "resuming from ckpt-" in out.stdout, out.stdout[-3000:]
    assert _losses(rt, bundle) == _losses(rt, reference)  # bit-identical, every step
    assert _eval_losses(rt, bundle) == _eval_losses(rt, reference)
    model = Path("outputs") / "sft" / "model" / "model.safetensors"
    assert _sha(bundle / model) == _sha(reference / model)
