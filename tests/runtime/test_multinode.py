"""Two torchrun agents on 127.0.0.1 (--nnodes 2, one rank each, gloo), started by the bundle's own launch script as
two nodes would start it: they train together like one process, and a node given another bundle is refused by
every rank before training, the difference named."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "fixtures" / "multinode" / "tiny_sft_2nodes.yaml"
TIMEOUT_S = 300  # against hangs only; the bundle's own rendezvous timeout is 60 s


def compile_to(out: Path, *overrides: str) -> Path:
    from tkc.bundle.io import write_bundle
    from tkc.compiler.pipeline import compile_recipe

    compiled = compile_recipe(RECIPE, list(overrides))
    volatile = {"source_root": str(compiled.source_root)}
    write_bundle(out, compiled.files, volatile, compiled.plan.inputs.tkc_version, True, compiled.sources)
    return out


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK",
            "TKC_NODE_RANK", "TKC_RDZV_ID", "SLURM_NODEID", "SLURM_JOB_NODELIST", "JOB_COMPLETION_INDEX")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PET_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"  # torchrun, tkc
    return env | {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def start_nodes(*bundles: Path) -> list[tuple[int, str]]:
    """Node i runs bundles[i]'s launch script; returns each node's (exit status, output)."""
    port = _free_port()
    procs = [subprocess.Popen(["bash", str(b / "launch" / "00-sft.sh"), "--node-rank", str(i), "--master-addr",
                               "127.0.0.1", "--master-port", port], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i, b in enumerate(bundles)]
    try:
        return [(p.wait(TIMEOUT_S), p.stdout.read()) for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def losses(bundle: Path) -> list[float]:
    lines = (bundle / "outputs" / "sft" / "steps.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
def test_two_nodes_train_together_like_one_process(tmp_path: Path) -> None:
    one = compile_to(tmp_path / "one", "hardware.nodes=1", "launch.kind=local")
    two = compile_to(tmp_path / "two")
    assert "exec torchrun" in (two / "launch" / "00-sft.sh").read_text()
    single = subprocess.run(["bash", str(one / "launch" / "00-sft.sh")], env=_env(), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert single.returncode == 0, single.stdout + single.stderr
    nodes = start_nodes(two, two)  # one bundle directory seen by both nodes, as on a shared filesystem
    for code, out in nodes:
        assert code == 0, out[-4000:]
        assert "2 ranks on 2 node(s) run bundle" in out  # each node's log says where rank 0 writes outputs/
    assert [p.relative_to(two) for p in two.rglob("steps.jsonl")] == [Path("outputs/sft/steps.jsonl")]
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    # Same global batch (8): one process runs 2 micro batches of 4, the two ranks one each and average their
    # gradients; only the summation order differs.
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    record = json.loads((two / "outputs" / "sft" / "run_record.json").read_text())
    assert record["world_size"] == 2 and (two / "outputs" / "sft" / "DONE").exists()


@pytest.mark.slow
def test_a_node_with_another_bundle_is_refused_by_every_rank(tmp_path: Path) -> None:
    first = compile_to(tmp_path / "first")
    other = compile_to(tmp_path / "other", "train.learning_rate=2e-3")
    hashes = [json.loads((b / "manifest.json").read_text())["bundle_hash"] for b in (first, other)]
    assert hashes[0] != hashes[1]
    nodes = start_nodes(first, other)
    for code, out in nodes:  # each node's own log says why it stopped, and that its rank exited 3
        assert code != 0
        assert "do not agree; every rank stops before training (exit 3)" in out, out[-4000:]
        line = next(ln for ln in out.splitlines() if ln.strip().startswith("bundle hash:"))
        assert hashes[0] in line and hashes[1] in line and "node 0 (host" in line and "node 1 (host" in line
        assert re.search(r"exitcode\s*:\s*3\b", out), out[-4000:]
    assert not list(tmp_path.rglob("steps.jsonl"))  # nobody trained a step


@pytest.mark.slow
def test_a_refused_environment_stops_every_rank_at_once(rt, tmp_path: Path) -> None:
    """Under a launcher a rank whose environment `tkc run` refuses still joins, so the others stop with it (exit 4)
    instead of waiting out the rendezvous timeout."""
    st = rt.stage("sft", "sft", 0, ["arith_sft"], max_steps=1, global_batch_size=4, micro_batch_size=2)
    plan = rt.resolved([st])
    plan["environment"]["pins"] = {"torch": "0.0.1"}
    bundle = rt.write_bundle(tmp_path / "run", plan)
    cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "tkc.cli.main", "run", str(bundle)]
    out = subprocess.run(cmd, env=_env() | {"TKC_DIST_TIMEOUT_S": "600"}, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "every rank stops before training (exit 4)" in text, text[-4000:]
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: its environment differs from the bundle's pins .*torch: pinned 0\.0\.1",
                         text), text[-4000:]
    assert re.search(r"exitcode\s*:\s*4\b", text), text[-4000:]  # torchrun names the first rank that exited
    assert not (bundle / "outputs" / "sft").exists()
