"""Benchmark 4: determinism: the same per-step losses again, across repeats, ranks and a kill -9 resume.

    .venv/bin/python bench/determinism.py [--side both|tkc|peer] [--workloads sft_lora,dpo_lora]

Per tool, on shared workloads (default SFT+LoRA, 40 steps of 4 records, and DPO+LoRA, 20 steps of 4 pairs;
bench/workloads.py), every per-step loss compared at full precision (tkc: steps.jsonl; peer:
trainer_state.json's log_history):
* repeat: the one-process run twice; the first is the reference for the other checks.
* ranks: two processes with the same global batch (2 records per rank), twice. tkc: the bundle's own torchrun
  launch script (gloo on CPU; the cpu profile's 2 threads split, 1 per rank); peer: its multi-process launch
  (FORCE_TORCHRUN=1, NPROC_PER_NODE=2). Judged: the two 2-rank runs identical to each other, and no further
  from the one-process run than 1% of that run's loss spread (its standard deviation over the steps): float
  sums run in another order, so bit-equality across rank counts is not expected, and Adam carries the
  last-bit differences forward.
* kill -9: a checkpoint every 10 steps; the process group gets SIGKILL as soon as step 15 is reported, and
  the same run is started again from its checkpoint. tkc: `tkc run` again (it resumes by itself); peer:
  `resume_from_checkpoint: <output_dir>/checkpoint-10`, its documented way. Judged: all 40 losses of the
  resumed run identical to the reference's.
Saving checkpoints changes nothing the model sees, so the kill -9 runs are compared with the reference.
Results: bench/results/determinism.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TKC, run, save, tkc_ready, tkc_versions  # noqa: E402
from errors import PEER_ENV  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from peer import versions as peer_versions  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS, Workload, workdir, write_peer_config, write_tkc_recipe  # noqa: E402

RANKS = 2
SAVE_EVERY = 10
KILL_AT = 15
PEER_STEP = r"^\{'loss': "  # the peer's per-step log line
RANK_SPREAD = 0.01  # 2 ranks may differ from one process by this fraction of its losses' standard deviation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(a: list[float] | None, b: list[float] | None) -> dict:
    """Whether two loss sequences are identical (same length, bit-equal floats) and how far apart they are."""
    if not a or not b:
        return {"identical": None, "max_abs_diff": None, "max_rel_diff": None}
    pairs = list(zip(a, b, strict=False))
    return {
        "identical": len(a) == len(b) and a == b,
        "steps": [len(a), len(b)],
        "max_abs_diff": max(abs(x - y) for x, y in pairs),
        "max_rel_diff": max(abs(x - y) / max(abs(y), 1e-12) for x, y in pairs),
    }


def _count(r, pattern: str) -> int:
    """How many output lines match `pattern`: the steps a run reported (a resumed run reports only its own)."""
    rx = re.compile(pattern)
    return sum(1 for _, s in r.lines if rx.search(s))


def _outcome(r, losses: list[float] | None, **extra) -> dict:
    out = {"ok": r.returncode == 0 and bool(losses), "wall_s": round(r.wall_s, 2), "losses": losses, **extra}
    if not out["ok"]:
        out["error"] = [s for _, s in r.lines][-8:]
    return out


# ---- tkc -------------------------------------------------------------------------------------------------


def _tkc_losses(bundle: Path, stage: str) -> list[float] | None:
    path = bundle / "outputs" / stage / "steps.jsonl"
    if not path.exists():
        return None
    return [rec["loss"] for rec in map(json.loads, path.read_text().splitlines()) if "loss" in rec]


def _tkc_bundle(w: Workload, model: Path, d: Path, ranks: int = 1, **train: object) -> Path:
    """Compile the workload's recipe (`ranks` processes on its CPU node) into d/run."""
    shutil.rmtree(d, ignore_errors=True)
    recipe = write_tkc_recipe(w, model, d / "recipe.yaml", ranks, **train)
    c = run([TKC, "compile", recipe, "-o", d / "run"], timeout=120)
    if c.returncode != 0:
        raise RuntimeError("tkc compile failed:\n" + c.text[-2000:])
    return d / "run"


def tkc_side(w: Workload, model: Path) -> dict:
    stage = "dpo" if w.kind == "dpo" else "sft"
    runs: dict[str, dict] = {}
    for i in range(2):
        bundle = _tkc_bundle(w, model, workdir("determinism", w.name, "tkc", f"one-{i}"))
        r = run([TKC, "run", bundle], timeout=900)
        runs[f"one_process_{i}"] = _outcome(r, _tkc_losses(bundle, stage))
    venv_bin = str(TKC.parent)
    for i in range(2):
        bundle = _tkc_bundle(w, model, workdir("determinism", w.name, "tkc", f"ranks-{i}"), ranks=RANKS)
        script = next((bundle / "launch").glob("00-*.sh"))
        env = {"PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "MASTER_PORT": str(_free_port())}
        r = run(["bash", script], env=env, timeout=900)
        record = bundle / "outputs" / stage / "run_record.json"
        world = json.loads(record.read_text()).get("world_size") if record.exists() else None
        runs[f"ranks_{i}"] = _outcome(r, _tkc_losses(bundle, stage), world_size=world)
    bundle = _tkc_bundle(w, model, workdir("determinism", w.name, "tkc", "kill9"), save_steps=SAVE_EVERY)
    first = run([TKC, "run", bundle], timeout=900, stop_on=rf"^\[{stage}\] step {KILL_AT}/")
    killed_at = len(_tkc_losses(bundle, stage) or [])
    again = run([TKC, "run", bundle], timeout=900)
    resumed = next((s.strip() for _, s in again.lines if "resuming from" in s), None)
    runs["kill9"] = _outcome(again, _tkc_losses(bundle, stage), killed_after_steps=killed_at,
                             killed_with_sigkill=first.returncode == -9, resume_line=resumed,
                             steps_after_resume=_count(again, rf"^\[{stage}\] step \d+/"))
    return _judge(runs)


# ---- peer ------------------------------------------------------------------------------------------------


def _peer_losses(out: Path) -> list[float] | None:
    state = out / "trainer_state.json"
    if not state.exists():
        return None
    return [h["loss"] for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def _peer_run(w: Workload, model: Path, d: Path, *, fresh: bool = True, env: dict | None = None,
              stop_on: str | None = None, **cfg: object):
    if fresh:
        shutil.rmtree(d, ignore_errors=True)
    out = d / "out"
    path = write_peer_config(w, model, out, d / "cfg.yaml", **cfg)
    full_env = {**PEER_ENV, "HF_DATASETS_CACHE": str(d / "hf-cache"), **(env or {})}
    return run([PEER_CLI, "train", path], env=full_env, timeout=900, stop_on=stop_on), out


def peer_side(w: Workload, model: Path) -> dict:
    runs: dict[str, dict] = {}
    for i in range(2):
        r, out = _peer_run(w, model, workdir("determinism", w.name, "peer", f"one-{i}"))
        runs[f"one_process_{i}"] = _outcome(r, _peer_losses(out))
    venv_bin = str(Path(PEER_CLI).parent)  # its launcher execs `torchrun` from PATH
    for i in range(2):
        env = {"FORCE_TORCHRUN": "1", "NNODES": "1", "NPROC_PER_NODE": str(RANKS),
               "MASTER_PORT": str(_free_port()), "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
        r, out = _peer_run(w, model, workdir("determinism", w.name, "peer", f"ranks-{i}"), env=env,
                           per_device_train_batch_size=w.batch // RANKS)
        world = next((s for _, s in r.lines if f"world size: {RANKS}" in s), None)
        runs[f"ranks_{i}"] = _outcome(r, _peer_losses(out), world_size=RANKS if world else None)
    d = workdir("determinism", w.name, "peer", "kill9")
    save_cfg = {"save_strategy": "steps", "save_steps": SAVE_EVERY}
    first, out = _peer_run(w, model, d, stop_on=rf"\| {KILL_AT}/{w.steps} \[", **save_cfg)
    ckpt = out / f"checkpoint-{SAVE_EVERY}"
    again, out = _peer_run(w, model, d, fresh=False, overwrite_output_dir=False,
                           resume_from_checkpoint=str(ckpt), **save_cfg)
    runs["kill9"] = _outcome(again, _peer_losses(out), killed_after_steps=_count(first, PEER_STEP),
                             killed_with_sigkill=first.returncode == -9, checkpoint_existed=ckpt.exists(),
                             resume_line=f"resume_from_checkpoint: {ckpt.name}",
                             steps_after_resume=_count(again, PEER_STEP))
    return _judge(runs)


# ---- both ------------------------------------------------------------------------------------------------


def _judge(runs: dict[str, dict]) -> dict:
    """The comparisons, each only where its premise held: both 2-rank runs really ran 2 ranks, and the kill -9
    run was killed by SIGKILL and then resumed (it trained fewer steps than the whole run); otherwise the
    check says not measured (None) and why, instead of comparing two uninterrupted runs."""
    loss = {k: v.get("losses") for k, v in runs.items()}
    ref = loss.get("one_process_0")
    ranks = compare(loss.get("ranks_1"), loss.get("ranks_0"))
    to_one = compare(loss.get("ranks_0"), ref)
    if any((runs.get(k) or {}).get("world_size") != RANKS for k in ("ranks_0", "ranks_1")):
        for c in (ranks, to_one):
            c.update(identical=None, why=f"a run did not report {RANKS} ranks")
    kill = runs.get("kill9") or {}
    kill9 = compare(loss.get("kill9"), ref)
    if not kill.get("killed_with_sigkill") or not 0 < (kill.get("steps_after_resume") or 0) < len(ref or []):
        kill9.update(identical=None, why="the run was not killed mid-way and resumed")
    if ref and len(ref) >= 2:
        to_one["tolerance_abs"] = RANK_SPREAD * statistics.pstdev(ref)
    ranks_ok = None if ranks["identical"] is None or to_one.get("tolerance_abs") is None else (
        ranks["identical"] and to_one["max_abs_diff"] <= to_one["tolerance_abs"])
    return {
        "runs": runs,
        "repeat": compare(loss.get("one_process_1"), ref),
        "ranks_repeat": ranks,
        "ranks_vs_one_process": to_one,
        "ranks_kept": ranks_ok,
        "kill9_resume": kill9,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["both", "tkc", "peer"], default="both")
    ap.add_argument("--workloads", default="sft_lora,dpo_lora", help="comma-separated, of " + ",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the benchmark is already short")
    a = ap.parse_args(argv)
    model = build_assets()
    do_tkc = a.side in ("both", "tkc") and tkc_ready("run")
    if a.side in ("both", "peer"):
        ensure_peer()
    res: dict = {"ranks": RANKS, "save_every": SAVE_EVERY, "kill_at_step": KILL_AT, "rank_spread": RANK_SPREAD,
                 "workloads": {}}
    t0 = time.monotonic()
    for n in a.workloads.split(","):
        w = WORKLOADS[n]
        entry: dict = {"config": {**w.__dict__, "data_dir": str(w.data_dir) if w.data_dir else None,
                                  "steps": w.steps}}
        if do_tkc:
            entry["tkc"] = tkc_side(w, model)
        if a.side in ("both", "peer"):
            entry["peer"] = peer_side(w, model)
        entry["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res["workloads"][n] = entry
    res["bench_wall_s"] = round(time.monotonic() - t0, 1)
    _keep_earlier(res)
    res["versions"] = {"tkc": tkc_versions(), "peer": peer_versions() if a.side != "tkc" else None}
    save("determinism", res)
    return res


def _keep_earlier(res: dict) -> None:
    """A subset ran (one side, or some workloads): keep the rest from the previous results, flagged."""
    from common import RESULTS

    path = RESULTS / "determinism.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    for n, entry in (old.get("workloads") or {}).items():
        mine = res["workloads"].setdefault(n, {**entry, "measured_utc": entry.get("measured_utc")})
        for tool in ("tkc", "peer"):
            if tool not in mine and tool in entry:
                mine[tool] = {**entry[tool], "from_earlier_run": old.get("generated_utc")}


if __name__ == "__main__":
    out = main()
    for name, e in out["workloads"].items():
        for tool in ("tkc", "peer"):
            if tool in e:
                checks = ("repeat", "ranks_repeat", "ranks_vs_one_process", "kill9_resume")
                print(name, tool, {k: e[tool][k] for k in checks})
