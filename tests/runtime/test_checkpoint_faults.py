"""Checkpoints and saved models survive faults: a full disk mid-save is a clear error that keeps the previous
checkpoint, a corrupt latest checkpoint is set aside and the previous one used, pruning never loses the last good
one, and a saved adapter's files are byte-identical across processes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tkc.runtime import checkpoint
from tkc.runtime.context import SaveFailed

PY = sys.executable
OPT = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}


def _save(root: Path, step: int, keep: int = 0, size: int = 4) -> Path:
    return checkpoint.save_checkpoint(root, step, tensors={"w": torch.full((size,), float(step))},
                                      optimizer_state=OPT, state={"bundle_hash": "h", "step": step}, keep=keep)


def _limited(script: str, limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` with files capped at `limit` bytes (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG)."""
    head = ("import resource, signal\n"
            "def limit():\n"
            "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n")
    return subprocess.run([PY, "-c", head + textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_full_disk_checkpoint_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    script = """
        import json, pathlib, torch
        from tkc.runtime import checkpoint
        from tkc.runtime.context import SaveFailed
        root = pathlib.Path("ckpts")
        opt = {"state": {}, "param_groups": []}
        checkpoint.save_checkpoint(root, 3, tensors={"w": torch.ones(4)}, optimizer_state=opt,
                                   state={"bundle_hash": "h", "step": 3}, keep=2)
        limit()  # the next checkpoint is ~1 MiB: its first file cannot be written
        try:
            checkpoint.save_checkpoint(root, 6, tensors={"w": torch.ones(1 << 18)}, optimizer_state=opt,
                                       state={"bundle_hash": "h", "step": 6}, keep=2)
        except SaveFailed as e:
            print(json.dumps({"error": str(e)}))
    """
    proc = _limited(script, 64 * 1024, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    message = json.loads(proc.stdout)["error"]
    assert "could not write checkpoint ckpt-6" in message and "File too large" in message
    assert "1.0 MiB" in message and "free there" in message
    assert "previous complete checkpoint ckpt-3 (step 3) is intact" in message and "once space is freed" in message
    root = tmp_path / "ckpts"
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-3"]  # nothing half-written that could look complete
    _, _, state = checkpoint.load_checkpoint(root / "ckpt-3", bundle_hash="h")
    assert state["step"] == 3


def test_no_space_inside_torch_save_names_the_real_error(tmp_path, monkeypatch):
    _save(tmp_path, 3)
    real_open = open

    class Full:  # a device that fills up after 100 bytes (fault injection: ENOSPC needs a full filesystem)
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith("optimizer.pt") else f

    monkeypatch.setattr(checkpoint, "open", full_open, raising=False)
    with pytest.raises(SaveFailed, match=r"ckpt-6 .*No space left on device") as info:
        _save(tmp_path, 6, size=1024)
    assert "ckpt-3 (step 3) is intact" in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-3"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_filesystem(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        _save(mnt, 3)
        with pytest.raises(SaveFailed, match=r"No space left on device.*free there\)") as info:
            _save(mnt, 6, size=1 << 17)
        assert "ckpt-3 (step 3) is intact" in str(info.value)
        assert [p.name for p in mnt.iterdir()] == ["ckpt-3"]
        assert checkpoint.load_checkpoint(mnt / "ckpt-3", bundle_hash="h")[2]["step"] == 3
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_complete_records_each_files_sha256_and_size(tmp_path):
    ckpt = _save(tmp_path, 3)
    record = json.loads((ckpt / "COMPLETE").read_text())
    assert record["step"] == 3
    assert sorted(record["files"]) == ["optimizer.pt", "state.json", "trainable.safetensors"]
    data = (ckpt / "state.json").read_bytes()
    assert record["files"]["state.json"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


DAMAGE = {
    "state.json missing": lambda c: (c / "state.json").unlink(),
    "state.json bad JSON": lambda c: (c / "state.json").write_text("{not json"),
    "weights truncated": lambda c: _truncate(c / "trainable.safetensors"),
    "weights garbled": lambda c: _flip(c / "trainable.safetensors"),
    "optimizer truncated": lambda c: _truncate(c / "optimizer.pt"),
    "optimizer garbled": lambda c: _flip(c / "optimizer.pt"),
}


# checkpoints written before COMPLETE recorded hashes (legacy) are checked by loading them, which cannot notice a
# flipped byte inside tensor data
CASES = [(d, False) for d in sorted(DAMAGE)] + [(d, True) for d in sorted(DAMAGE) if not d.endswith("garbled")]


@pytest.mark.parametrize(("damage", "legacy"), CASES, ids=[f"{d}{' (legacy)' * legacy}" for d, legacy in CASES])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, legacy):
    for step in (3, 6):
        _save(tmp_path, step)
    if legacy:
        for step in (3, 6):
            (tmp_path / f"ckpt-{step}" / "COMPLETE").write_text(f"{step}\n")
    DAMAGE[damage](tmp_path / "ckpt-6")
    logged: list[str] = []
    path, tensors, _, state = checkpoint.load_latest(tmp_path, bundle_hash="h", log=logged.append)
    assert path.name == "ckpt-3" and state["step"] == 3 and torch.equal(tensors["w"], torch.full((4,), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-3", "ckpt-6.corrupt-1"]  # kept, never deleted
    assert len(logged) == 1 and "checkpoint ckpt-6 is corrupt" in logged[0] and "ckpt-6.corrupt-1" in logged[0]


def test_no_valid_checkpoint_left_starts_over_and_says_so(tmp_path):
    for step in (3, 6):
        _save(tmp_path, step)
        (tmp_path / f"ckpt-{step}" / "state.json").unlink()
    (tmp_path / "ckpt-6.corrupt-1").mkdir()  # an earlier aside: the next one gets another name
    logged: list[str] = []
    assert checkpoint.load_latest(tmp_path, bundle_hash="h", log=logged.append) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-3.corrupt-1", "ckpt-6.corrupt-1", "ckpt-6.corrupt-2"]
    assert "starting this stage from step 0, exactly as a fresh run would" in logged[-1]


def test_another_bundles_checkpoint_is_still_refused_not_set_aside(tmp_path):
    from tkc.runtime.context import BundleChanged

    _save(tmp_path, 3)
    with pytest.raises(BundleChanged):
        checkpoint.load_latest(tmp_path, bundle_hash="other", log=print)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-3"]


def test_prune_never_counts_or_deletes_an_aside_nor_the_last_whole_checkpoint(tmp_path):
    for step in (3, 6):
        _save(tmp_path, step)
    _truncate(tmp_path / "ckpt-6" / "trainable.safetensors")  # the newest is broken (not yet noticed)
    checkpoint.prune_checkpoints(tmp_path, keep=1)
    assert (tmp_path / "ckpt-3").is_dir()  # the last whole one stays
    checkpoint.load_latest(tmp_path, bundle_hash="h", log=lambda m: None)
    for step in (9, 12):
        _save(tmp_path, step, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-12", "ckpt-6.corrupt-1"]


ADAPTER_SCRIPT = """
import json, pathlib, sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from tkc.runtime.checkpoint import save_model_dir

torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1]))
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
save_model_dir(pathlib.Path(sys.argv[2]), lambda d: model.save_pretrained(str(d), safe_serialization=True))
"""


@pytest.mark.slow
def test_saved_adapter_config_is_byte_identical_across_hash_seeds(tmp_path):
    tiny = Path(__file__).resolve().parents[2] / "recipes" / "assets" / "tiny-qwen2"
    outs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"model-{seed}"
        proc = subprocess.run([PY, "-c", ADAPTER_SCRIPT, str(tiny), str(out)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    configs = [(o / "adapter_config.json").read_bytes() for o in outs]
    assert configs[0] == configs[1] == configs[2]
    assert json.loads(configs[0])["target_modules"] == sorted(json.loads(configs[0])["target_modules"])
    weights = {(o / "adapter_model.safetensors").read_bytes() for o in outs}
    assert len(weights) == 1


def test_full_disk_while_saving_the_model_leaves_no_half_written_folder(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    _save(tmp_path / "checkpoints", 9)
    script = """
        import json, pathlib
        from tkc.runtime.checkpoint import save_model_dir
        from tkc.runtime.context import SaveFailed
        limit()
        try:
            save_model_dir(pathlib.Path("model"), lambda d: (d / "model.safetensors").write_bytes(b"x" * 300_000))
        except SaveFailed as e:
            print(json.dumps({"error": str(e)}))
    """
    proc = _limited(script, 100_000, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    message = json.loads(proc.stdout)["error"]
    assert "could not save the model to model: [Errno 27] File too large" in message
    assert "last checkpoint ckpt-9 is intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_published_checkpoints_hold_canonical_adapter_configs(tmp_path):
    tmp = tmp_path / ".tmp-checkpoint-5"
    (tmp / "policy").mkdir(parents=True)  # as a trainer (GRPO's) writes its adapter into the checkpoint
    config = {"r": 4, "target_modules": ["v_proj", "q_proj", "o_proj"], "modules_to_save": ["score", "head"]}
    (tmp / "policy" / "adapter_config.json").write_text(json.dumps(config))
    checkpoint.publish(tmp, tmp_path / "checkpoint-5", 5)
    saved = json.loads((tmp_path / "checkpoint-5" / "policy" / "adapter_config.json").read_text())
    assert saved == {**config, "target_modules": ["o_proj", "q_proj", "v_proj"]}  # a user's list keeps its order
    assert checkpoint.check_files(tmp_path / "checkpoint-5") is None
