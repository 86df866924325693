"""Scaling on CPU: 2 ranks x 1 thread against 1 rank x 2 threads on the same global batch, per strategy.

    .venv/bin/python bench/scaling.py [--steps N] [--strategies ddp,zero2,zero3,fsdp2] [--no-peer]

Workload: full SFT of the bench's tiny Qwen2 (bench/tiny_assets.py) on the first `steps x 4` alpaca records,
global batch 4 (2 ranks: micro batch 2 each; 1 rank: 4), cutoff 256, fp32, seed 42, one epoch of `steps`
optimizer steps. Each configuration is compiled by `tkc compile` and started by the bundle's own launch script
(launch/00-sft.sh: torchrun over gloo for 2 ranks, DS_ACCELERATOR=cpu for DeepSpeed).
Strategies: DDP (launch.kind torchrun; its 1-rank column is the plain one-process run), DeepSpeed ZeRO-2 and
ZeRO-3 (launch.kind deepspeed; 1 rank: one torchrun rank through the same engine), FSDP2 (launch.kind fsdp).
Each configuration runs --reps times (default 2), the two columns alternating, and the fastest repetition is
kept (the machine is shared: the least disturbed run is the closest to its speed); every repetition's tokens/s is
kept beside it. Per configuration: tokens/s = tokens_seen / the training loop's wall time (run_record.json); the median step
rate over steps 2..N (from each steps.jsonl line's arrival); peak RSS per rank = the largest ru_maxrss of the
rank processes (read at each process's exit by scripts/gpu_check.py's sitecustomize hook); launch -> exit.
The peer: LLaMA-Factory's DeepSpeed ZeRO-3 (its examples/deepspeed/ds_z3_config.json settings) on the same
workload, 2 ranks x 1 thread (FORCE_TORCHRUN=1), with deepspeed at tkc's pin installed beside the peer's venv
(bench/.peer/ds-site, on PYTHONPATH for this run only, so the peer's other benchmarks are unchanged); if it does
not run on CPU, its exact error is the row. Results: bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, TKC_PY, median, ratio, run, save, step_rates, tkc_versions  # noqa: E402
from peer import PEER  # noqa: E402
from peer import PY as PEER_PY  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS, peer_config, tkc_recipe, workdir  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from gpu_check import MEM_HOOK  # noqa: E402

GiB = 2**30
BATCH, CUTOFF = 4, 256
STRATEGIES = {  # name: (launch kind, ZeRO stage, the runtime file that implements it)
    "ddp": ("torchrun", None, None),
    "zero2": ("deepspeed", 2, "deepspeed.py"),
    "zero3": ("deepspeed", 3, "deepspeed.py"),
    "fsdp2": ("fsdp", None, "fsdp.py"),
}
DS_SITE = PEER / "ds-site"
PEER_DS_Z3 = {  # LLaMA-Factory 0.9.5 examples/deepspeed/ds_z3_config.json
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
                          "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                          "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                          "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hook_dir() -> Path:
    d = workdir("scaling", "hook")
    (d / "sitecustomize.py").write_text(MEM_HOOK)
    return d


def rank_peaks(mem: Path) -> list[int]:
    """Peak RSS of each rank process (one process: that process), from the exit hook's files."""
    procs = [json.loads(p.read_text()) for p in sorted(mem.glob("mem-*.json"))]
    ranked = [p for p in procs if p["ranked"]] or [p for p in procs if "torch" in p["modules"]]
    return sorted(p["max_rss_bytes"] for p in ranked)


def tkc_recipe_for(strategy: str, ranks: int, model: Path, d: Path, steps: int) -> dict:
    kind, zero, _ = STRATEGIES[strategy]
    w = replace(WORKLOADS["sft_full"], records=BATCH * steps, cutoff=CUTOFF)
    r = tkc_recipe(w, model, d, ranks=ranks)
    if ranks == 1 and strategy == "ddp":
        r["launch"] = {"kind": "local"}
    else:
        r["hardware"] = {"accelerator": "cpu", "devices_per_node": ranks, "memory_gb": 16}
        r["launch"] = {"kind": kind} | ({"zero_stage": zero} if zero is not None else {})
    r["launch"]["cpu_threads"] = 2 // ranks  # per process: 2 x 1 or 1 x 2, the machine's two cores either way
    return r


def tkc_once(strategy: str, ranks: int, model: Path, steps: int) -> dict:
    import yaml

    d = workdir("scaling", f"{strategy}-{ranks}x{2 // ranks}")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "recipe.yaml").write_text(yaml.safe_dump(tkc_recipe_for(strategy, ranks, model, d, steps), sort_keys=False))
    env = {"PATH": f"{TKC_PY.parent}:{os.environ.get('PATH', '')}", "MASTER_PORT": str(free_port())}
    c = run([TKC_PY.parent / "tkc", "compile", "recipe.yaml", "-o", "run"], cwd=d, env=env, timeout=300)
    if c.returncode != 0:
        return {"ok": False, "error": [s for _, s in c.lines][-6:]}
    mem = d / "mem"
    mem.mkdir()
    env |= {"PYTHONPATH": str(hook_dir()), "TKC_GPU_CHECK_MEM": str(mem)}
    sdir = d / "run" / "outputs" / "sft"
    # --allow-env-drift: the cpu lockfile pins no deepspeed, so `tkc run` of a deepspeed bundle would refuse the
    # venv's (dev lockfile) deepspeed; the drift it lets through is recorded (env_drift)
    r = run(["bash", "launch/00-sft.sh", "--allow-env-drift"], cwd=d / "run", env=env, timeout=900, watch_file=sdir / "steps.jsonl")
    out: dict = {"ok": r.returncode == 0, "launch_to_exit_s": round(r.wall_s, 2)}
    if r.returncode != 0:
        return {**out, "error": [s for _, s in r.lines][-8:]}
    rec = json.loads((sdir / "run_record.json").read_text())
    marks = [(t, json.loads(s[len("@file"):])["tokens_seen"]) for t, s in r.lines if s.startswith("@file{")]
    peaks = rank_peaks(mem)
    losses = [json.loads(s)["loss"] for s in (sdir / "steps.jsonl").read_text().splitlines() if s.strip()]
    return {**out, "world_size": rec["world_size"], "steps": rec["steps"], "tokens": rec["tokens_seen"],
            "train_wall_s": rec["wall_time_s"], "tokens_per_s": rec["tokens_seen"] / rec["wall_time_s"],
            "step_tokens_per_s_median": median(step_rates(marks)), "peak_rss_per_rank_gib": [p / GiB for p in peaks],
            "peak_rss_max_rank_gib": max(peaks) / GiB if peaks else None, "losses": losses,
            "env_drift": rec.get("env_drift", [])}


# -- the peer ----------------------------------------------------------------------------------------------------
def peer_deepspeed() -> str | None:
    """deepspeed (tkc's pin) beside the peer's venv, in bench/.peer/ds-site; None, or why it could not be had."""
    if (DS_SITE / "deepspeed").exists():
        return None
    pins = {ln.split("==")[0]: ln.split("==")[1].split()[0] for ln in (ROOT / "lockfiles" / "dev.txt").read_text()
            .splitlines() if "==" in ln and not ln.startswith("#")}
    wanted = [f"{n}=={pins[n]}" for n in ("deepspeed", "hjson", "ninja", "py-cpuinfo", "msgpack", "einops")]
    r = subprocess.run([str(PEER_PY), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(DS_SITE), *wanted], capture_output=True, text=True,
                       env={**os.environ, "DS_BUILD_OPS": "0"})
    return None if r.returncode == 0 else "installing deepspeed for the peer failed: " + r.stderr[-800:]


def peer_once(model: Path, steps: int) -> dict:
    from errors import PEER_ENV
    from peer import CLI

    problem = peer_deepspeed()
    if problem:
        return {"ok": False, "error": [problem]}
    d = workdir("scaling", "peer-zero3-2x1")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "ds_z3.json").write_text(json.dumps(PEER_DS_Z3, indent=2))
    w = replace(WORKLOADS["sft_full"], records=BATCH * steps, cutoff=CUTOFF)
    cfg = peer_config(w, model, d / "out", deepspeed=str(d / "ds_z3.json"), per_device_train_batch_size=BATCH // 2,
                      ddp_backend="gloo")
    import yaml

    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**PEER_ENV, "PATH": f"{PEER_PY.parent}:{os.environ.get('PATH', '')}", "FORCE_TORCHRUN": "1", "NNODES": "1", "NPROC_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": f"{hook_dir()}:{DS_SITE}", "TKC_GPU_CHECK_MEM": str(d), "HF_DATASETS_CACHE": str(d / "hf")}
    r = run([CLI, "train", d / "cfg.yaml"], env=env, timeout=900)
    out: dict = {"ok": r.returncode == 0, "launch_to_exit_s": round(r.wall_s, 2)}
    if r.returncode != 0:
        errs = [s for _, s in r.lines if "Error" in s or "error" in s]
        return {**out, "error": (errs[-3:] or []) + [s for _, s in r.lines][-6:]}
    tr = json.loads((d / "out" / "train_results.json").read_text())
    marks = _peer_marks(r)
    peaks = rank_peaks(d)
    tokens = marks[-1][1] if marks else None
    return {**out, "train_wall_s": tr["train_runtime"], "tokens": tokens,
            "tokens_per_s": tokens / tr["train_runtime"] if tokens else None,
            "step_tokens_per_s_median": median(step_rates(marks)), "peak_rss_per_rank_gib": [p / GiB for p in peaks],
            "peak_rss_max_rank_gib": max(peaks) / GiB if peaks else None}


def _peer_marks(r) -> list[tuple[float, int]]:
    from train import _peer_marks as marks

    return marks(r)


# -- all of it ---------------------------------------------------------------------------------------------------
def missing_runtime(strategy: str) -> str | None:
    f = STRATEGIES[strategy][2]
    if f and not (ROOT / "src" / "tkc" / "runtime" / "strategy" / f).exists():
        return f"not run: src/tkc/runtime/strategy/{f} (this strategy's training) is not in this checkout"
    return None


def best(runs: list[dict]) -> dict:
    """The repetition with the highest tokens/s (the least disturbed by other work), with every repetition's."""
    ok = [x for x in runs if x.get("ok")]
    if not ok:
        return runs[-1]
    top = max(ok, key=lambda x: x["tokens_per_s"])
    return {**top, "tokens_per_s_each": [round(x["tokens_per_s"], 1) for x in ok], "reps": len(runs)}


def row(strategy: str, model: Path, steps: int, reps: int) -> dict:
    why = missing_runtime(strategy)
    if why:
        return {"status": why}
    runs: dict[int, list[dict]] = {2: [], 1: []}
    for i in range(reps):  # alternate the order: a slow phase of the shared machine falls on both
        for ranks in (2, 1) if i % 2 == 0 else (1, 2):
            runs[ranks].append(tkc_once(strategy, ranks, model, steps))
    two, one = best(runs[2]), best(runs[1])
    for name, r in (("2x1", two), ("1x2", one)):
        ok = "ok" if r["ok"] else "FAILED: " + " | ".join(r.get("error", [])[-2:])
        print(f"scaling: {strategy} {name}: {ok}, {r.get('tokens_per_s') or 0:.0f} tokens/s", flush=True)
    return {"2x1": two, "1x2": one, "tokens_per_s_ratio_2x1_vs_1x2": ratio(two.get("tokens_per_s"),
                                                                           one.get("tokens_per_s")),
            "peak_rss_ratio_2x1_vs_1x2": ratio(two.get("peak_rss_max_rank_gib"), one.get("peak_rss_max_rank_gib"))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--reps", type=int, default=2, help="repetitions per configuration; the fastest is kept")
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args(argv)
    model = build_assets()
    t0 = time.monotonic()
    rows = {s: row(s, model, a.steps, a.reps) for s in a.strategies.split(",") if s}
    peer = {"status": "not run (--no-peer)"} if a.no_peer else None
    if peer is None:
        ensure_peer()
        peer = peer_once(model, a.steps)
        print(f"scaling: peer zero3 2x1: {'ok' if peer['ok'] else 'FAILED'}", flush=True)
    for key in rows:
        rows[key]["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if peer.get("ok") is not None:
        peer["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res = {"config": {"model": "bench tiny Qwen2 (hidden 256, 4 layers)", "method": "full", "global_batch": BATCH,
                      "cutoff": CUTOFF, "steps": a.steps, "reps": a.reps, "records": BATCH * a.steps, "precision": "fp32"},
           "rows": rows, "peer_zero3_2x1": peer, "versions": {"tkc": tkc_versions()},
           "wall_s": round(time.monotonic() - t0, 1)}
    keep_earlier(res, a.steps, a.reps)
    save("scaling", res)
    return res


def keep_earlier(res: dict, steps: int, reps: int) -> None:
    """A run of some strategies (or --no-peer) keeps the other rows of the previous results of the same
    workload, each with the date it was measured."""
    from common import RESULTS

    path = RESULTS / "scaling.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if (old.get("config") or {}).get("steps") != steps or old["config"].get("reps") != reps:
        return
    for key, row in (old.get("rows") or {}).items():
        res["rows"].setdefault(key, {**row, "measured_utc": row.get("measured_utc", old.get("generated_utc"))})
    if res["peer_zero3_2x1"].get("ok") is None and "peer_zero3_2x1" in old:
        p = old["peer_zero3_2x1"]
        res["peer_zero3_2x1"] = {**p, "measured_utc": p.get("measured_utc", old.get("generated_utc"))}


if __name__ == "__main__":
    main()
