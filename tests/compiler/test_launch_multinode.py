"""Multi-node launch scripts, run by bash with a stand-in `torchrun` (and `scontrol`) on PATH: where this node's
rank, the rendezvous host and port come from, the refusals when they are missing, and what the scripts export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tkc.compiler.launch import render_launch

# Prints its argv and the variables the launch script hands the ranks, as JSON.
FAKE_TORCHRUN = """#!/usr/bin/env python3
import json, os, sys
keys = ("TKC_NODE_RANK", "TKC_DIST_TIMEOUT_S", "TKC_DEEPSPEED_CONFIG", "TKC_ACCELERATE_CONFIG", "DS_ACCELERATOR",
        "CUBLAS_WORKSPACE_CONFIG", "TKC_RDZV_ID")
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}))
"""
# A long host list (a large allocation): a reader that stops after the first line (`| head -n 1` under pipefail)
# kills the writer with SIGPIPE, and the script used to die of it (exit 141), now and then with a short list.
FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && { printf 'node-a\\nnode-b\\n'; for i in $(seq 20000); do echo "node-$i"; done; }
"""


def resolved(*, kind: str = "torchrun", accelerator: str = "cpu", nnodes: int = 2, per_node: int = 1,
             deterministic: bool = True) -> dict[str, Any]:
    """A plan reduced to what launch rendering reads: one training stage, one export stage."""
    world = nnodes * per_node
    train = {"global_batch_size": 4 * world, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
             "world_size": world, "precision": "fp32", "max_grad_norm": 1.0, "logging_steps": 1,
             "gradient_checkpointing": False, "deterministic": deterministic}
    backend = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl", "npu": "hccl"}[accelerator]
    return {"name": "mn", "hardware": {"accelerator": accelerator},
            "stages": [{"name": "sft", "kind": "sft", "index": 0, "train": train},
                       {"name": "export", "kind": "export", "index": 1}],
            "launch": {"kind": kind, "backend": backend, "nnodes": nnodes, "nproc_per_node": per_node,
                       "world_size": world, "master_port": 29400, "zero_stage": 2 if kind == "deepspeed" else None,
                       "offload": False, "rdzv_timeout_s": 77, "slurm": None, "kubernetes": None}}


def write(tmp_path: Path, plan: dict[str, Any]) -> Path:
    """The launch files in a bundle folder, and a bin/ with the stand-ins."""
    bundle = tmp_path / "bundle"
    for rel, text in render_launch(plan).items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text(text)
    (tmp_path / "bin").mkdir()
    for name, text in (("torchrun", FAKE_TORCHRUN), ("scontrol", FAKE_SCONTROL)):
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    return bundle


def launch(tmp_path: Path, bundle: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    return subprocess.run(["bash", str(bundle / "launch" / "00-sft.sh"), *args], capture_output=True, text=True,
                          timeout=30, env={"PATH": path, **env})


def torchrun_call(out: subprocess.CompletedProcess) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_arguments_name_the_node_and_the_rendezvous(tmp_path: Path) -> None:
    bundle = write(tmp_path, resolved())
    call = torchrun_call(launch(tmp_path, bundle, "--node-rank", "1", "--master-addr", "10.0.0.7",
                                "--master-port=31000", "--source-root", "a b", MASTER_ADDR="ignored"))
    argv = call["argv"]
    assert option(argv, "--nnodes") == "2" and option(argv, "--nproc-per-node") == "1"
    assert option(argv, "--rdzv-backend") == "c10d" and option(argv, "--rdzv-endpoint") == "10.0.0.7:31000"
    assert option(argv, "--rdzv-id") == "tkc-mn-sft"
    assert option(argv, "--rdzv-conf") == "join_timeout=77,last_call_timeout=30,close_timeout=60,read_timeout=60,is_host=0"
    assert argv[argv.index("-m"):] == ["-m", "tkc.cli.main", "run", ".", "--stage", "sft", "--source-root", "a b"]
    assert call["env"]["TKC_NODE_RANK"] == "1" and call["env"]["TKC_DIST_TIMEOUT_S"] == "77"
    assert call["cwd"] == str(bundle)


@pytest.mark.parametrize("rank", ["0", "00"])
def test_node_zero_hosts_the_rendezvous_store(tmp_path: Path, rank: str) -> None:
    """"00" is node 0 too: compared as text it hosted nothing, and every node waited out the join timeout."""
    bundle = write(tmp_path, resolved())
    call = torchrun_call(launch(tmp_path, bundle, NODE_RANK=rank, MASTER_ADDR="h0"))
    argv = call["argv"]
    assert option(argv, "--rdzv-conf").endswith(",is_host=1") and option(argv, "--rdzv-endpoint") == "h0:29400"
    assert call["env"]["TKC_NODE_RANK"] == "0"


def test_slurm_variables_give_rank_and_first_host(tmp_path: Path) -> None:
    bundle = write(tmp_path, resolved(kind="slurm"))
    call = torchrun_call(launch(tmp_path, bundle, SLURM_NODEID="1", SLURM_PROCID="1",
                                SLURM_JOB_NODELIST="node-[a-b]", TKC_RDZV_ID="tkc-1234"))
    assert option(call["argv"], "--rdzv-endpoint") == "node-a:29400"
    assert option(call["argv"], "--rdzv-id") == "tkc-1234" and call["env"]["TKC_NODE_RANK"] == "1"
    sbatch = (bundle / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1\n" in sbatch
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1 bash launch/00-sft.sh" in sbatch


@pytest.mark.parametrize("env", [{"JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "tkc-mn-0.tkc-mn"},
                                 {"PET_NODE_RANK": "1", "PET_MASTER_ADDR": "tkc-mn-0.tkc-mn",
                                  "PET_MASTER_PORT": "29400"}], ids=["indexed-job", "pytorchjob"])
def test_kubernetes_variables_give_rank_and_host(tmp_path: Path, env: dict[str, str]) -> None:
    bundle = write(tmp_path, resolved(kind="kubernetes"))
    call = torchrun_call(launch(tmp_path, bundle, **env))
    assert option(call["argv"], "--rdzv-endpoint") == "tkc-mn-0.tkc-mn:29400"
    assert call["env"]["TKC_NODE_RANK"] == "1"


@pytest.mark.parametrize(("args", "env", "message"), [
    ((), {"NODE_RANK": "0"}, "no rendezvous host: pass --master-addr HOST or set MASTER_ADDR"),
    ((), {"MASTER_ADDR": "h0"}, "no node rank: pass --node-rank N or set NODE_RANK"),
    (("--node-rank", "x"), {"MASTER_ADDR": "h0"}, "node rank 'x' is not a number from 0 to 1"),
    (("--node-rank", "2"), {"MASTER_ADDR": "h0"}, "node rank 2 is out of range: this run has 2 node(s)"),
    (("--master-port", "http"), {"MASTER_ADDR": "h0", "NODE_RANK": "0"}, "master port 'http' is not a number"),
    (("--node-rank",), {"MASTER_ADDR": "h0"}, "--node-rank needs a value"),
], ids=["no-host", "no-rank", "bad-rank", "rank-range", "bad-port", "no-value"])
def test_missing_or_bad_node_settings_are_refused(tmp_path: Path, args: tuple[str, ...], env: dict[str, str],
                                                  message: str) -> None:
    bundle = write(tmp_path, resolved())
    out = launch(tmp_path, bundle, *args, **env)
    assert out.returncode != 0 and out.stdout == ""  # torchrun never started
    assert message in out.stderr


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
def test_deepspeed_starts_through_torchrun(tmp_path: Path, accelerator: str) -> None:
    bundle = write(tmp_path, resolved(kind="deepspeed", accelerator=accelerator, per_node=2))
    script = (bundle / "launch" / "00-sft.sh").read_text()
    assert "exec torchrun" in script and "deepspeed \\" not in script and "--num_nodes" not in script
    call = torchrun_call(launch(tmp_path, bundle, "--node-rank", "0", "--master-addr", "h0"))
    assert call["env"]["TKC_DEEPSPEED_CONFIG"] == "launch/deepspeed.json"
    assert option(call["argv"], "--nnodes") == "2" and option(call["argv"], "--nproc-per-node") == "2"
    assert call["env"]["DS_ACCELERATOR"] == ("cpu" if accelerator == "cpu" else None)


def test_fsdp_starts_through_torchrun(tmp_path: Path) -> None:
    bundle = write(tmp_path, resolved(kind="fsdp", accelerator="cuda"))
    assert "accelerate launch" not in (bundle / "launch" / "00-sft.sh").read_text()
    call = torchrun_call(launch(tmp_path, bundle, "--node-rank", "1", "--master-addr", "h0"))
    assert call["env"]["TKC_ACCELERATE_CONFIG"] == "launch/accelerate_fsdp.yaml"


@pytest.mark.parametrize(("accelerator", "deterministic", "expected"), [
    ("cuda", True, ":4096:8"), ("rocm", True, ":4096:8"), ("cuda", False, None), ("cpu", True, None)])
def test_deterministic_cuda_sets_the_cublas_workspace(tmp_path: Path, accelerator: str, deterministic: bool,
                                                       expected: str | None) -> None:
    bundle = write(tmp_path, resolved(accelerator=accelerator, deterministic=deterministic))
    call = torchrun_call(launch(tmp_path, bundle, "--node-rank", "0", "--master-addr", "h0"))
    assert call["env"]["CUBLAS_WORKSPACE_CONFIG"] == expected
    export = (bundle / "launch" / "01-export.sh").read_text()  # stages without `train` run deterministic
    assert ("export CUBLAS_WORKSPACE_CONFIG=:4096:8\n" in export) == (accelerator != "cpu")


def test_single_node_scripts_need_no_node_settings(tmp_path: Path) -> None:
    bundle = write(tmp_path, resolved(nnodes=1, per_node=2))
    call = torchrun_call(launch(tmp_path, bundle))
    assert option(call["argv"], "--rdzv-endpoint") == "127.0.0.1:29400"
    assert "is_host" not in option(call["argv"], "--rdzv-conf") and call["env"]["TKC_NODE_RANK"] is None
