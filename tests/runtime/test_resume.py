"""Exact resume: kill -9 or SIGTERM mid-training, run again, get the uninterrupted run's losses and weights."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from tkc.runtime.context import EXIT_BUNDLE_CHANGED, EXIT_SIGTERM

# 12 steps, checkpoint every 3; global batch 8 = 2 micro-batches of 4, so a kill lands mid-accumulation often.
TRAIN = {"max_steps": 12, "global_batch_size": 8, "micro_batch_size": 4, "save_steps": 3, "save_total_limit": 2,
         "learning_rate": 1e-2}


def _plan(rt, tiny_pretrained, method="lora"):
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method=method, **TRAIN)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 40  # 5 steps per epoch: resume crosses an epoch boundary
    return plan


def _weights_sha(bundle) -> str:
    model = bundle / "outputs" / "sft" / "model"
    path = model / "adapter_model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _losses(rt, bundle) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in rt.steps(bundle, "sft") if "loss" in r]


@pytest.fixture(scope="module")
def reference_run(rt_module, tiny_pretrained, tmp_path_factory):
    rt = rt_module
    bundle = rt.write_bundle(tmp_path_factory.mktemp("ref") / "run", _plan(rt, tiny_pretrained))
    proc = rt.run_in_subprocess(bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _losses(rt, bundle), _weights_sha(bundle)


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_is_exact(rt, tmp_path, tiny_pretrained, reference_run):
    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained))
    proc = rt.run_in_subprocess(bundle, wait=False)
    rt.wait_for_step(bundle, 7, proc)  # past the step-6 checkpoint, inside the next steps
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (bundle / "outputs" / "sft" / "DONE").exists()
    again = rt.run_in_subprocess(bundle)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from ckpt-" in again.stdout
    ref_losses, ref_sha = reference_run
    assert _losses(rt, bundle) == ref_losses  # bit-identical floats, every step
    assert _weights_sha(bundle) == ref_sha


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_exits_143_then_resumes_exactly(rt, tmp_path, tiny_pretrained, reference_run):
    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained))
    proc = rt.run_in_subprocess(bundle, wait=False)
    rt.wait_for_step(bundle, 4, proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_SIGTERM == 143, out
    ckpts = sorted((bundle / "outputs" / "sft" / "checkpoints").glob("ckpt-*"))
    stopped_at = max(int(p.name.split("-")[1]) for p in ckpts)
    assert stopped_at >= 4 and (bundle / "outputs" / "sft" / "checkpoints" / f"ckpt-{stopped_at}" / "COMPLETE").exists()
    again = rt.run_in_subprocess(bundle)
    assert again.returncode == 0, again.stdout + again.stderr
    ref_losses, ref_sha = reference_run
    assert _losses(rt, bundle) == ref_losses
    assert _weights_sha(bundle) == ref_sha


def test_resume_refuses_a_checkpoint_from_a_changed_bundle(rt, tmp_path, tiny_pretrained):
    from tkc.runtime import checkpoint

    plan = _plan(rt, tiny_pretrained)
    plan["stages"][0]["train"]["max_steps"] = 2
    plan["stages"][0]["train"]["save_steps"] = 1
    bundle = rt.write_bundle(tmp_path / "run", plan)
    from tkc.runtime.run import run_bundle

    assert run_bundle(bundle) == 0
    found = checkpoint.list_checkpoints(bundle / "outputs" / "sft" / "checkpoints")
    assert found
    (bundle / "outputs" / "sft" / "DONE").unlink()
    plan["stages"][0]["train"]["learning_rate"] = 5e-3  # a semantic change: new bundle hash
    import shutil

    shutil.move(bundle / "outputs", tmp_path / "old-outputs")
    rt.write_bundle(bundle, plan)  # (tkc.bundle keeps outputs only when the hash is unchanged)
    shutil.move(tmp_path / "old-outputs", bundle / "outputs")  # as if a user copied them over
    assert run_bundle(bundle) == EXIT_BUNDLE_CHANGED


def test_done_stage_is_skipped_and_foreign_done_refused(rt, tmp_path, tiny_pretrained, capsys):
    from tkc.runtime.run import run_bundle

    plan = _plan(rt, tiny_pretrained)
    plan["stages"][0]["train"].update(max_steps=1, save_steps=0)
    bundle = rt.write_bundle(tmp_path / "run", plan)
    assert run_bundle(bundle) == 0
    assert run_bundle(bundle) == 0
    assert "already done" in capsys.readouterr().out
    (bundle / "outputs" / "sft" / "DONE").write_text("0" * 64 + "\n")
    assert run_bundle(bundle) == EXIT_BUNDLE_CHANGED


def test_interrupted_checkpoint_write_leaves_previous_usable(tmp_path):
    import torch

    from tkc.runtime import checkpoint

    root = tmp_path / "checkpoints"
    t = {"w": torch.ones(2)}
    checkpoint.save_checkpoint(root, 3, tensors=t, optimizer_state={"state": {}, "param_groups": []},
                               state={"bundle_hash": "h", "step": 3}, keep=2)
    (root / ".tmp-ckpt-6").mkdir()  # a crash mid-write: no COMPLETE, never renamed
    (root / ".tmp-ckpt-6" / "trainable.safetensors").write_bytes(b"partial")
    assert checkpoint.list_checkpoints(root)[-1][1].name == "ckpt-3"
    tensors, _, state = checkpoint.load_checkpoint(root / "ckpt-3", bundle_hash="h")
    assert state["step"] == 3 and torch.equal(tensors["w"], t["w"])
    for step in (6, 9, 12):
        checkpoint.save_checkpoint(root, step, tensors=t, optimizer_state={}, state={"bundle_hash": "h"}, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(root)] == [9, 12]
    assert not list(root.glob(".tmp-*"))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_set_aside_and_the_previous_one_resumes_exactly(rt, tmp_path, tiny_pretrained,
                                                                                     reference_run):
    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained))
    assert rt.run_in_subprocess(bundle).returncode == 0
    out = bundle / "outputs" / "sft"
    (out / "DONE").unlink()  # as if killed after the step-9 checkpoint
    (out / "checkpoints" / "ckpt-9" / "state.json").unlink()  # and that checkpoint lost its state
    again = rt.run_in_subprocess(bundle)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "checkpoint ckpt-9 is corrupt (state.json is missing); kept as checkpoints/ckpt-9.corrupt-1" in again.stdout
    assert "resuming from ckpt-6 (step 6)" in again.stdout
    ref_losses, ref_sha = reference_run
    assert _losses(rt, bundle) == ref_losses
    assert _weights_sha(bundle) == ref_sha
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-6", "ckpt-9", "ckpt-9.corrupt-1"]
    assert not (out / "checkpoints" / "ckpt-9.corrupt-1" / "state.json").exists()  # kept as it was found


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_exits_75_with_a_clear_message_then_resumes(rt, tmp_path, tiny_pretrained,
                                                                              reference_run):
    import subprocess

    from tkc.runtime.context import EXIT_SAVE_FAILED

    bundle = rt.write_bundle(tmp_path / "run", _plan(rt, tiny_pretrained))
    # files capped at 100 kB (RLIMIT_FSIZE, SIGXFSZ ignored): the data cache and the checkpoint's weights (60 kB)
    # fit, its optimizer state (128 kB) does not, so the first save fails midway with EFBIG as on a full disk
    code = ("import resource, signal, sys, pathlib; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
            "from tkc.runtime.run import run_bundle; "
            f"sys.exit(run_bundle(pathlib.Path({str(bundle)!r})))")
    proc = subprocess.run([rt.PY, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == EXIT_SAVE_FAILED == 75, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "tkc run: could not write checkpoint ckpt-3" in proc.stdout and "File too large" in proc.stdout
    assert "this stage has no earlier checkpoint" in proc.stdout and "once space is freed" in proc.stdout
    ckpts = bundle / "outputs" / "sft" / "checkpoints"
    assert list(ckpts.iterdir()) == []  # nothing half-written that could look complete
    assert not (bundle / "outputs" / "sft" / "DONE").exists()
    again = rt.run_in_subprocess(bundle)  # space freed
    assert again.returncode == 0, again.stdout + again.stderr
    ref_losses, ref_sha = reference_run
    assert _losses(rt, bundle) == ref_losses
    assert _weights_sha(bundle) == ref_sha


@pytest.mark.slow
def test_a_second_run_of_a_running_bundle_is_refused(rt, tmp_path, tiny_pretrained):
    """Two `tkc run` of one bundle would write the same outputs/ and checkpoints: the second is refused (exit 3,
    naming the first's pid) without touching them; once the first has stopped, a run goes ahead and resumes."""
    plan = _plan(rt, tiny_pretrained)
    plan["stages"][0]["train"].update(max_steps=100_000, save_steps=100_000)  # still running when the second comes
    bundle = rt.write_bundle(tmp_path / "run", plan)
    first = rt.run_in_subprocess(bundle, wait=False)
    rt.wait_for_step(bundle, 2, first)
    second = rt.run_in_subprocess(bundle)
    assert second.returncode == EXIT_BUNDLE_CHANGED, second.stdout + second.stderr
    assert f"another `tkc run` of {bundle.resolve()} is running (pid {first.pid})" in second.stdout
    assert first.poll() is None  # the first goes on
    os.kill(first.pid, signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == EXIT_SIGTERM, out
    again = rt.run_in_subprocess(bundle, wait=False)  # the lock went with the first process
    rt.wait_for_step(bundle, max(r["step"] for r in rt.steps(bundle, "sft")) + 1, again)
    again.kill()
    again.wait()
