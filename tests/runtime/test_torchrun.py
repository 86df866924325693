"""Real multi-process runs on CPU: init_distributed under torchrun, and the rendered launch script itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tkc.compiler.launch import render_launch
from tkc.runtime.dist import DistInfo, dist_info_from_env, init_distributed

REPO = Path(__file__).resolve().parents[2]
ALL_REDUCE = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from tkc.runtime.dist import init_distributed, shutdown_distributed
    info = init_distributed("gloo", timeout_s=60)
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    # One file per rank: two ranks printing to one pipe can interleave their lines.
    with open(os.path.join(os.environ["RESULTS_DIR"], f"rank{info.rank}.json"), "w") as fh:
        json.dump({"rank": info.rank, "world": info.world_size, "local": info.local_rank,
                   "sum": t.item(), "argv": sys.argv[1:]}, fh)
    shutdown_distributed(info)
""")


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _results(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("rank*.json"))]


def _env(results_dir: Path, extra_path: Path | None = None) -> dict[str, str]:
    results_dir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["RESULTS_DIR"] = str(results_dir)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    if extra_path:
        env["PYTHONPATH"] = str(extra_path)
    return env


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("nccl") == DistInfo(0, 1, 0)  # never touches CUDA when alone
    assert dist_info_from_env({"WORLD_SIZE": "1", "RANK": "0"}) == DistInfo()
    assert dist_info_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == DistInfo(3, 4, 1)


@pytest.mark.slow
def test_torchrun_two_processes_all_reduce(tmp_path: Path) -> None:
    script = tmp_path / "allreduce.py"
    script.write_text(ALL_REDUCE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(tmp_path / "results"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _results(tmp_path / "results") == [
        {"rank": r, "world": 2, "local": r, "sum": 3.0, "argv": []} for r in (0, 1)]


def _fake_tkc(tmp_path: Path) -> Path:
    """A stand-in `tkc.cli.main` (first on PYTHONPATH) that runs the all_reduce and reports its argv."""
    pkg = tmp_path / "fake" / "tkc" / "cli"
    pkg.mkdir(parents=True)
    (tmp_path / "fake" / "tkc" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(ALL_REDUCE.replace("from tkc.runtime.dist", "from tkc_dist"))
    (tmp_path / "fake" / "tkc_dist.py").write_text((REPO / "src" / "tkc" / "runtime" / "dist.py").read_text())
    return tmp_path / "fake"


def _bundle_with_script(tmp_path: Path, nnodes: int, per_node: int, timeout_s: int) -> Path:
    stage = {"name": "my sft", "kind": "sft", "index": 0, "train": {"global_batch_size": 2}}
    resolved = {"name": "demo", "hardware": {"accelerator": "cpu"}, "stages": [stage],
                "launch": {"kind": "torchrun", "nnodes": nnodes, "nproc_per_node": per_node,
                           "master_port": 29500, "rdzv_timeout_s": timeout_s}}
    bundle = tmp_path / "bundle dir"
    for rel, text in render_launch(resolved).items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text(text)
    return next((bundle / "launch").glob("00-*.sh"))


@pytest.mark.slow
def test_rendered_torchrun_script_runs_two_ranks(tmp_path: Path) -> None:
    script = _bundle_with_script(tmp_path, nnodes=1, per_node=2, timeout_s=60)
    env = _env(tmp_path / "results", _fake_tkc(tmp_path)) | {"MASTER_PORT": _free_port()}
    out = subprocess.run(["bash", str(script), "--source-root", "x y"], capture_output=True, text=True,
                         timeout=180, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    argv = ["run", ".", "--stage", "my sft", "--source-root", "x y"]
    assert _results(tmp_path / "results") == [{"rank": r, "world": 2, "local": r, "sum": 3.0, "argv": argv} for r in (0, 1)]


@pytest.mark.slow
def test_missing_node_fails_within_the_rendezvous_timeout(tmp_path: Path) -> None:
    """Two nodes expected, one started: torchrun must give up after join_timeout, not hang."""
    script = _bundle_with_script(tmp_path, nnodes=2, per_node=1, timeout_s=5)
    env = _env(tmp_path / "results", _fake_tkc(tmp_path)) | {"MASTER_ADDR": "127.0.0.1", "NODE_RANK": "0",
                                                              "MASTER_PORT": _free_port()}
    start = time.monotonic()
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0 and "RendezvousTimeoutError" in out.stderr, out.stderr[-3000:]
    assert time.monotonic() - start < 90
    assert _results(tmp_path / "results") == []


def test_multinode_script_refuses_to_start_without_master_addr(tmp_path: Path) -> None:
    script = _bundle_with_script(tmp_path, nnodes=2, per_node=1, timeout_s=5)
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env=_env(tmp_path / "results"))
    assert out.returncode != 0 and "MASTER_ADDR" in out.stderr
