"""Benchmark 3 (+4): training throughput, memory, loss, launch-to-first-step and determinism.

    .venv/bin/python bench/train.py [--reps N] [--quick] [--side both|tkc|peer] [--workloads sft_lora,...]

Workloads (bench/workloads.py): SFT+LoRA and full SFT on the first 160 alpaca records, DPO+LoRA on the
first 80 dpo_en_demo pairs; batch 4, one epoch (40 / 40 / 20 steps), cutoff 512, fp32, no gradient
checkpointing, seed 42, cosine schedule, same LoRA rank/alpha/targets.

Per run, the same way for both tools:
* tokens = non-padding tokens actually processed, counted from the tool's own tokenized rows (tkc:
  `tokens_seen` = sum of the rows' input_ids lengths; peer: its tokenized dataset saved via `tokenized_path`,
  summed the same way; for SFT cross-checked against its `num_input_tokens_seen` in "non_padding" mode).
* training wall = the tool's own training-loop time (tkc run_record.json `wall_time_s`; peer
  train_results.json `train_runtime`); tokens/s = tokens / training wall. Also launch -> exit.
* launch -> first step = arrival of the first step record (tkc steps.jsonl line; peer "{'loss': ...}" log line).
* peak RSS = the process tree's resident memory, sampled every 50 ms from /proc.
* final loss = the last step's loss; the mean of the last 5 steps is shown beside it.
Companions less sensitive to other jobs on this shared machine: per-step throughput (steps 2..N, from each
step record's arrival time and cumulative token count) as a median and as a 90th percentile (with
bench/padding.py's padded sizes, bench/report.py adds a padding-neutral one), and tokens per CPU-second of the
process tree from step 1 to exit.
Threads: tkc's cpu profile pins the node's intra-op threads (`launch.cpu_threads`, 2); the peer uses torch's
default (one per physical core). --peer-threads N adds a peer row with OMP_NUM_THREADS=N, the matched setting,
unless N is the peer's default anyway (then its default row is the matched one; `peer_default_threads`).
Determinism: per tool, every repetition's full-precision loss sequence compared with the first.
Runs alternate tools (and the order flips every repetition); 3 repetitions per tool (2 with --quick).
Results: bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TKC, TKC_PY, median, ratio, run, save, step_rates, tkc_ready, tkc_versions  # noqa: E402
from errors import PEER_ENV  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import PY as PEER_PY  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from peer import versions as peer_versions  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS, Workload, peer_defaults, workdir, write_peer_config, write_tkc_recipe  # noqa: E402

GiB = 2**30
PEER_T = "peer_matched_threads"  # the peer with OMP_NUM_THREADS = tkc's cpu_threads (--peer-threads)
COUNT_CODE = (
    "import json,sys; from datasets import load_from_disk; d=load_from_disk(sys.argv[1]);"
    "t=d['train'] if hasattr(d,'keys') else d;"
    "print(json.dumps({'rows': len(t), 'tokens': sum(len(v) for c in t.column_names if c.endswith('input_ids')"
    " for v in t[c])}))"
)


def _peer_tokens(tokenized: Path) -> dict | None:
    for py in (TKC_PY, PEER_PY):  # read the peer's saved rows; fall back to its own `datasets` version
        r = run([py, "-c", COUNT_CODE, tokenized], timeout=120)
        line = next((s for _, s in reversed(r.lines) if s.startswith("{")), None)
        if r.returncode == 0 and line:
            return json.loads(line)
    return None


def _robust(r, marks: list[tuple[float, int]], total_tokens: int | None) -> dict:
    """Contention-robust figures from (arrival time, cumulative tokens) per step and the tree's CPU time.

    step_tokens_per_s_median: median over steps 2..N of the step's tokens / time since the previous step.
    step_tokens_per_s_p90: the 90th percentile of the same (tkc: the speed of its least disturbed steps; the
    peer's also picks its least padded batches: bench/report.py's padding-neutral figure corrects for that).
    tokens_per_cpu_s: tokens of steps 2..N / CPU seconds the process tree used from step 1 to exit.
    """
    rates = step_rates(marks)
    p90 = statistics.quantiles(rates, n=10)[-1] if len(rates) >= 2 else None
    out: dict = {
        "step_tokens_per_s_median": median(rates),
        "step_tokens_per_s_p90": p90,
        "cpu_s": r.cpu_s,
        "step_marks": [[round(t, 3), c] for t, c in marks],
    }
    if marks and total_tokens:
        cpu_first = r.cpu_at(marks[0][0])
        train_cpu = r.cpu_s - cpu_first if cpu_first is not None else None
        out["train_cpu_s"] = train_cpu
        out["tokens_per_cpu_s"] = (total_tokens - marks[0][1]) / train_cpu if train_cpu else None
    return out


def _peer_marks(r) -> list[tuple[float, int]]:
    import ast

    marks = []
    for t, s in r.lines:
        if s.startswith("{'loss': "):
            try:
                d = ast.literal_eval(s.strip())
            except (ValueError, SyntaxError):
                continue
            if d.get("num_input_tokens_seen"):
                marks.append((t, int(d["num_input_tokens_seen"])))
    return marks


def peer_default_threads() -> int | None:
    """torch's intra-op thread count in the peer's venv when nothing sets it (what its default runs use)."""
    r = run([PEER_PY, "-c", "import torch; print(torch.get_num_threads())"], env=PEER_ENV, timeout=120)
    out = [s for _, s in r.lines if s.strip().isdigit()]
    return int(out[-1]) if r.returncode == 0 and out else None


def peer_once(w: Workload, model: Path, d: Path, threads: int | None = None) -> dict:
    shutil.rmtree(d, ignore_errors=True)
    out = d / "out"
    cfg = write_peer_config(w, model, out, d / "cfg.yaml", tokenized_path=str(d / "tokenized"))
    env = {**PEER_ENV, "HF_DATASETS_CACHE": str(d / "hf-cache")}
    if threads:  # torch takes its intra-op thread count from these at start-up
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    r = run([PEER_CLI, "train", cfg], env=env, timeout=900)
    res: dict = {
        "ok": r.returncode == 0,
        "launch_to_exit_s": r.wall_s,
        "peak_rss_gib": r.peak_rss_bytes / GiB,
        "launch_to_first_step_s": r.first(r"^\{'loss': "),
    }
    if not res["ok"]:
        res["error"] = [s for _, s in r.lines][-8:]
        return res
    tr = json.loads((out / "train_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]  # the closing summary has train_loss
    counted = _peer_tokens(d / "tokenized")
    res.update(
        train_wall_s=tr["train_runtime"],
        losses=losses,
        steps=len(losses),
        peer_num_input_tokens_seen=tr.get("num_input_tokens_seen"),
        tokens=counted["tokens"] if counted else None,
        rows=counted["rows"] if counted else None,
    )
    marks = _peer_marks(r)
    res.update(_robust(r, marks, marks[-1][1] if marks else None))
    return res


def tkc_once(w: Workload, model: Path, d: Path) -> dict:
    shutil.rmtree(d, ignore_errors=True)
    recipe = write_tkc_recipe(w, model, d / "recipe.yaml")
    bundle = d / "run"
    c = run([TKC, "compile", recipe, "-o", bundle], timeout=120)
    if c.returncode != 0:
        return {"ok": False, "error": [s for _, s in c.lines][-8:]}
    stage = "dpo" if w.kind == "dpo" else "sft"
    sdir = bundle / "outputs" / stage
    r = run([TKC, "run", bundle], timeout=900, watch_file=sdir / "steps.jsonl")
    res: dict = {
        "ok": r.returncode == 0,
        "launch_to_exit_s": r.wall_s,
        "peak_rss_gib": r.peak_rss_bytes / GiB,
        "launch_to_first_step_s": r.first(r"^@file\{"),
        "compile_s": c.wall_s,
    }
    if not res["ok"]:
        res["error"] = [s for _, s in r.lines][-8:]
        return res
    rec = json.loads((sdir / "run_record.json").read_text())
    steps = [json.loads(s) for s in (sdir / "steps.jsonl").read_text().splitlines() if s.strip()]
    losses = [s["loss"] for s in steps if "loss" in s]
    res.update(train_wall_s=rec["wall_time_s"], tokens=rec["tokens_seen"], losses=losses, steps=len(losses))
    resolved = json.loads((bundle / "resolved.json").read_text())
    res["cpu_threads"] = (resolved.get("launch") or {}).get("cpu_threads")
    marks = [(t, json.loads(s[len("@file") :])["tokens_seen"]) for t, s in r.lines if s.startswith("@file{")]
    res.update(_robust(r, [m for m in marks if m[1]], rec["tokens_seen"]))
    return res


def _final(losses: list[float]) -> tuple[float | None, float | None]:
    if not losses:
        return None, None
    return losses[-1], statistics.fmean(losses[-5:])


def _summary(runs: list[dict]) -> dict:
    ok = [x for x in runs if x.get("ok")]
    for x in ok:
        x["tokens_per_s"] = (
            x["tokens"] / x["train_wall_s"] if x.get("tokens") and x.get("train_wall_s") else None
        )
        x["final_loss"], x["final_loss_last5"] = _final(x.get("losses", []))
    first = ok[0]["losses"] if ok else None
    same = [x["losses"] == first for x in ok[1:]]
    diffs = [max((abs(a - b) for a, b in zip(x["losses"], first, strict=False)), default=0.0) for x in ok[1:]]
    finals = [x["final_loss"] for x in ok if x["final_loss"] is not None]
    return {
        "runs_ok": len(ok),
        "runs": len(runs),
        "tokens": median([x.get("tokens") for x in ok]),
        "train_wall_s": median([x.get("train_wall_s") for x in ok]),
        "tokens_per_s": median([x.get("tokens_per_s") for x in ok]),
        "launch_to_exit_s": median([x.get("launch_to_exit_s") for x in ok]),
        "launch_to_first_step_s": median([x.get("launch_to_first_step_s") for x in ok]),
        "peak_rss_gib": median([x.get("peak_rss_gib") for x in ok]),
        "step_tokens_per_s_median": median([x.get("step_tokens_per_s_median") for x in ok]),
        "step_tokens_per_s_p90": median([x.get("step_tokens_per_s_p90") for x in ok]),
        "tokens_per_cpu_s": median([x.get("tokens_per_cpu_s") for x in ok]),
        "cpu_s": median([x.get("cpu_s") for x in ok]),
        "final_loss": median(finals),
        "final_loss_last5": median([x["final_loss_last5"] for x in ok if x["final_loss_last5"] is not None]),
        "steps": ok[0]["steps"] if ok else None,
        "deterministic": (all(same) if same else None),
        "max_loss_diff_between_runs": max(diffs) if diffs else None,
        "errors": [x["error"] for x in runs if not x.get("ok")][:2],
        "per_run": [{k: v for k, v in x.items() if k != "losses"} for x in runs],
        "losses_first_run": first,
    }


def _ratios(t: dict, p: dict) -> dict:
    return {
        "tokens_per_s": ratio(t.get("tokens_per_s"), p.get("tokens_per_s")),
        "peak_rss": ratio(t.get("peak_rss_gib"), p.get("peak_rss_gib")),
        "step_tokens_per_s_p90": ratio(t.get("step_tokens_per_s_p90"), p.get("step_tokens_per_s_p90")),
        "step_tokens_per_s_median": ratio(
            t.get("step_tokens_per_s_median"), p.get("step_tokens_per_s_median")
        ),
        "tokens_per_cpu_s": ratio(t.get("tokens_per_cpu_s"), p.get("tokens_per_cpu_s")),
        "launch_to_exit_speedup": ratio(p.get("launch_to_exit_s"), t.get("launch_to_exit_s")),
        "launch_to_first_step_speedup": ratio(
            p.get("launch_to_first_step_s"), t.get("launch_to_first_step_s")
        ),
        "final_loss_diff": (t["final_loss"] - p["final_loss"])
        if t.get("final_loss") is not None and p.get("final_loss") is not None
        else None,
    }


def _alternate(
    names: list[str], reps: int, model: Path, do_tkc: bool, do_peer: bool, peer_threads: int | None
) -> dict[str, dict[str, list[dict]]]:
    """Run every workload `reps` times per tool, alternating tools and flipping the order each repetition."""
    raw: dict[str, dict[str, list[dict]]] = {n: {"tkc": [], "peer": [], PEER_T: []} for n in names}
    for i in range(reps):
        for n in names:
            w = WORKLOADS[n]
            order = ["tkc", "peer", PEER_T] if i % 2 == 0 else [PEER_T, "peer", "tkc"]
            for tool in order:
                if tool == "tkc" and do_tkc:
                    raw[n]["tkc"].append(tkc_once(w, model, workdir("train", n, f"tkc-{i}")))
                elif tool == "peer" and do_peer:
                    raw[n]["peer"].append(peer_once(w, model, workdir("train", n, f"peer-{i}")))
                elif tool == PEER_T and peer_threads:
                    raw[n][PEER_T].append(
                        peer_once(w, model, workdir("train", n, f"peer-t-{i}"), peer_threads)
                    )
            brief = {
                t: [(round(x.get("train_wall_s") or -1, 1), x.get("ok")) for x in raw[n][t]] for t in raw[n]
            }
            print(f"rep {i + 1}/{reps} {n}: {brief}", flush=True)
    return raw


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["both", "tkc", "peer"], default="both")
    ap.add_argument(
        "--workloads", default=None, help="comma-separated subset of " + ",".join(WORKLOADS) + ", or none"
    )
    ap.add_argument(
        "--peer-threads",
        type=int,
        default=None,
        help="also run the peer with OMP_NUM_THREADS=N (tkc's thread count) unless that is its default",
    )
    ap.add_argument(
        "--peer-defaults",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run SFT+LoRA with the peer's defaults (gradient checkpointing on)",
    )
    a = ap.parse_args(argv)
    # 3: this VM's speed shifts for minutes at a time (the same bundle, run back to back, lands on one of two
    # levels); a median of 3 alternating runs is not set by one run in the slow phase
    reps = a.reps or (2 if a.quick else 3)
    names = a.workloads.split(",") if a.workloads else (["sft_lora"] if a.quick else list(WORKLOADS))
    names = [] if names == ["none"] else names  # --workloads none --peer-defaults: only the peer-defaults row
    peer_def = a.peer_defaults if a.peer_defaults is not None else not a.quick
    model = build_assets()
    do_tkc = a.side in ("both", "tkc") and tkc_ready("run")
    do_peer = a.side in ("both", "peer")
    if do_peer:
        ensure_peer()
    default_threads = peer_default_threads() if do_peer else None
    if a.peer_threads and a.peer_threads == default_threads:
        print(
            f"the peer's default is {default_threads} threads: its default row is the matched one", flush=True
        )
        a.peer_threads = None
    raw = _alternate(names, reps, model, do_tkc, do_peer, a.peer_threads)
    res: dict = {"reps": reps, "workloads": {}}
    for n in names:
        w = WORKLOADS[n]
        entry = {
            "config": {**w.__dict__, "steps": w.steps},
            "tkc": _summary(raw[n]["tkc"]) if do_tkc else {"status": "not measured"},
            "peer": _summary(raw[n]["peer"]) if do_peer else {"status": "not measured"},
        }
        if a.peer_threads and do_peer:
            entry[PEER_T] = {**_summary(raw[n][PEER_T]), "threads": a.peer_threads}
        entry["peer_default_threads"] = default_threads
        entry["tkc_cpu_threads"] = next(
            (x.get("cpu_threads") for x in raw[n]["tkc"] if x.get("cpu_threads")), None
        )
        entry["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res["workloads"][n] = entry
    if peer_def and do_peer:
        wd = peer_defaults(WORKLOADS["sft_lora"])
        runs = [peer_once(wd, model, workdir("train", wd.name, f"peer-{i}")) for i in range(1)]
        res["peer_defaults_sft_lora"] = {
            "differs_by": "gradient checkpointing on (the peer's default)",
            "peer": _summary(runs),
        }
    res["versions"] = {
        "tkc": tkc_versions() if do_tkc else None,
        "peer": peer_versions() if do_peer else None,
    }
    res = _merge_train(res, a.side)
    _keep_other_workloads(res, names)
    for _n, entry in res["workloads"].items():
        entry["ratios"] = _ratios(entry["tkc"], entry["peer"])
        if PEER_T in entry:
            entry["ratios_vs_" + PEER_T] = _ratios(entry["tkc"], entry[PEER_T])
    res["targets"] = {
        "tokens_per_s_ratio_min": 1.5,
        "peak_rss_ratio_max": 1.0,
        "launch_to_first_step_max_s": 5.0,
    }
    save("train", res)
    return res


def _keep_other_workloads(res: dict, names: list[str]) -> None:
    """--workloads runs a subset: keep the previous results of the others (flagged with their date)."""
    from common import RESULTS

    path = RESULTS / "train.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    for n, entry in old.get("workloads", {}).items():
        if n not in names:
            entry.setdefault("measured_utc", old.get("generated_utc"))
            res["workloads"][n] = entry
    if "peer_defaults_sft_lora" not in res and "peer_defaults_sft_lora" in old:
        res["peer_defaults_sft_lora"] = old["peer_defaults_sft_lora"]


def _merge_train(res: dict, side: str) -> dict:
    """With --side X keep the other tool's figures per workload from the previous results (flagged)."""
    if side == "both":
        return res
    other = "peer" if side == "tkc" else "tkc"
    from common import RESULTS

    path = RESULTS / "train.json"
    if not path.exists():
        return res
    old = json.loads(path.read_text())
    for n, entry in res["workloads"].items():
        o = old.get("workloads", {}).get(n, {}).get(other, {})
        if o and "status" not in o:
            entry[other] = {**o, "from_earlier_run": old.get("generated_utc")}
    if side == "tkc" and "peer_defaults_sft_lora" in old:
        res["peer_defaults_sft_lora"] = {
            **old["peer_defaults_sft_lora"],
            "from_earlier_run": old.get("generated_utc"),
        }
    if res["versions"].get(other) is None:
        res["versions"][other] = old.get("versions", {}).get(other)
    return res


if __name__ == "__main__":
    out = main()
    for n, e in out["workloads"].items():
        print(n, e.get("ratios"))
