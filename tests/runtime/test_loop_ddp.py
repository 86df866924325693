"""torchrun --nproc_per_node 2 on CPU (gloo): two ranks compute what one process computes for the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = """
import importlib.util as u, sys, pathlib
s = u.spec_from_file_location("tkc_rt_helpers", {conftest!r}); h = u.module_from_spec(s); s.loader.exec_module(h)
h.install_data()
from tkc.runtime.run import run_bundle
sys.exit(run_bundle(pathlib.Path(sys.argv[1])))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(rt, tiny_pretrained):
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method="full", max_steps=4, global_batch_size=8,
                  micro_batch_size=2, save_steps=2, learning_rate=1e-3)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 32
    return plan


@pytest.mark.slow
def test_two_ranks_match_one_process(rt, tmp_path, tiny_pretrained):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(conftest=rt.__file__))
    one = rt.write_bundle(tmp_path / "one", _plan(rt, tiny_pretrained))
    two = rt.write_bundle(tmp_path / "two", _plan(rt, tiny_pretrained))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    single = subprocess.run([sys.executable, str(driver), str(one)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    cmd = [torchrun, "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(driver), str(two)]
    multi = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    assert "FutureWarning" not in multi.stderr, multi.stderr  # e.g. DDP's deprecated broadcast_buffers
    a = [r["loss"] for r in rt.steps(one, "sft")]
    b = [r["loss"] for r in rt.steps(two, "sft")]
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    wa = load_file(str(one / "outputs" / "sft" / "model" / "model.safetensors"))
    wb = load_file(str(two / "outputs" / "sft" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    record = json.loads((two / "outputs" / "sft" / "run_record.json").read_text())
    assert record["world_size"] == 2
    ckpts = sorted(p.name for p in (two / "outputs" / "sft" / "checkpoints").iterdir())
    assert ckpts == ["ckpt-2"]  # only rank 0 writes; the final step is the model itself
