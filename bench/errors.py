"""Benchmark 1: time to report a misspelled config key, and time to compile/validate a correct config.

    .venv/bin/python bench/errors.py [--reps N] [--quick] [--side both|tkc|peer]

tkc:  `tkc compile typo.yaml -o DIR` (must fail, naming typo.yaml:LINE) and `tkc compile good.yaml -o DIR`.
peer: `llamafactory-cli train typo.yaml` (must fail naming the key); for a correct config the peer has no
      validate-only command, so its figure is launch -> "Process rank" log line (arguments parsed and
      checked, before any data is read); the process is then killed.
Runs alternate tkc, peer, tkc, peer ... Results: bench/results/errors.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TKC, Run, median, ratio, run, save, tkc_ready, tkc_versions  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from peer import versions as peer_versions  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS, workdir, write_peer_config, write_tkc_recipe  # noqa: E402

TYPO_FROM, TYPO_TO = "learning_rate:", "learning_rat:"
PEER_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _typo(good: Path, bad: Path) -> int:
    """Write `bad` = `good` with the learning-rate key misspelled; return its 1-based line number."""
    lines = good.read_text().splitlines(keepends=True)
    n = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(TYPO_FROM))
    lines[n] = lines[n].replace(TYPO_FROM, TYPO_TO, 1)
    bad.write_text("".join(lines))
    return n + 1


def _summary(r: Run, keep: int = 6) -> dict:
    tail = [s for _, s in r.lines if s.strip()][-keep:]
    return {"wall_s": round(r.wall_s, 4), "returncode": r.returncode, "output_tail": tail}


def tkc_context(d: Path, model: Path) -> dict:
    good = write_tkc_recipe(WORKLOADS["sft_lora"], model, d / "tkc" / "recipe.yaml")
    bad = d / "tkc" / "typo.yaml"
    return {"good": good, "bad": bad, "line": _typo(good, bad)}


def one_tkc_typo(ctx: dict, d: Path) -> Run:
    return run([TKC, "compile", ctx["bad"], "-o", d / "tkc" / "out-typo"], timeout=120)


def one_tkc_good(ctx: dict, d: Path, i: int) -> Run:
    out = d / "tkc" / f"out-{i}"
    shutil.rmtree(out, ignore_errors=True)
    return run([TKC, "compile", ctx["good"], "-o", out], timeout=120)


def one_peer_typo(ctx: dict) -> Run:
    return run([PEER_CLI, "train", ctx["bad"]], env=PEER_ENV, timeout=300)


def one_peer_good(ctx: dict) -> Run:
    return run([PEER_CLI, "train", ctx["good"]], env=PEER_ENV, timeout=300, stop_on=r"Process rank: 0")


def _judge_typo(runs: list[Run], bad: Path, line: int) -> dict:
    text = runs[0].text if runs else ""
    return {
        "exit_nonzero": all(r.returncode not in (0, None) for r in runs) if runs else None,
        "names_key": "learning_rat" in text,
        "file_line": bool(re.search(rf"{re.escape(bad.name)}:{line}\b", text)),
        "expected_location": f"{bad.name}:{line}",
        "message": [s for _, s in runs[0].lines if s.strip()][-8:] if runs else [],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["both", "tkc", "peer"], default="both")
    a = ap.parse_args(argv)
    reps = a.reps or (3 if a.quick else 7)
    peer_reps = max(2, reps // 2) if a.quick else max(3, reps // 2 + 1)  # each peer run costs ~8 s
    model = build_assets()
    d = workdir("errors")
    do_tkc = a.side in ("both", "tkc") and tkc_ready("compile")
    do_peer = a.side in ("both", "peer")
    if do_peer:
        ensure_peer()
    w = WORKLOADS["sft_lora"]
    tctx: dict = {}
    if do_tkc:
        tctx = tkc_context(d, model)
    pgood = write_peer_config(w, model, d / "peer" / "out", d / "peer" / "cfg.yaml")
    pctx = {"good": pgood, "bad": d / "peer" / "typo.yaml"}
    pctx["line"] = _typo(pgood, pctx["bad"])
    t_typo: list[Run] = []
    t_good: list[Run] = []
    p_typo: list[Run] = []
    p_good: list[Run] = []
    for i in range(reps):  # alternate the tools
        if do_tkc:
            t_typo.append(one_tkc_typo(tctx, d))
            t_good.append(one_tkc_good(tctx, d, i))
        if do_peer and i < peer_reps:
            p_typo.append(one_peer_typo(pctx))
            p_good.append(one_peer_good(pctx))
        print(f"rep {i + 1}/{reps} done", flush=True)
    res: dict = {"reps": {"tkc": len(t_typo), "peer": len(p_typo)}}
    if do_tkc:
        good_ok = all(r.returncode == 0 for r in t_good)
        res["tkc"] = {
            "typo_report_s": median([r.wall_s for r in t_typo]),
            "typo": _judge_typo(t_typo, tctx["bad"], tctx["line"]),
            "compile_s": median([r.wall_s for r in t_good]) if good_ok else None,
            "compile_ok": good_ok,
            "compile_runs": [_summary(r, 3) for r in t_good],
            "typo_runs_s": [round(r.wall_s, 4) for r in t_typo],
            "versions": tkc_versions(),
        }
    else:
        res["tkc"] = {
            "status": "not measured: `tkc compile` not available yet"
            if a.side != "peer"
            else "not measured (--side peer)"
        }
    if do_peer:
        res["peer"] = {
            "typo_report_s": median([r.wall_s for r in p_typo]),
            "typo": _judge_typo(p_typo, pctx["bad"], pctx["line"]),
            "config_accepted_s": median([r.wall_s for r in p_good]),
            "typo_runs_s": [round(r.wall_s, 3) for r in p_typo],
            "config_accepted_runs_s": [round(r.wall_s, 3) for r in p_good],
            "versions": peer_versions(),
        }
    else:
        res["peer"] = {"status": "not measured (--side tkc)"}
    res = _merge_previous("errors", res, a.side)
    t, p = res["tkc"], res["peer"]
    res["ratios"] = {
        "typo_report_speedup": ratio(p.get("typo_report_s"), t.get("typo_report_s")),
        "validate_speedup": ratio(p.get("config_accepted_s"), t.get("compile_s")),
    }
    res["targets"] = {"typo_report_speedup_min": 25.0, "compile_s_max": 0.5, "file_line_required": True}
    save("errors", res)
    return res


def _merge_previous(name: str, res: dict, side: str) -> dict:
    """With --side X, keep the other side's figures from the previous results file (flagged as such)."""
    if side == "both":
        return res
    import json

    from common import RESULTS

    prev_path = RESULTS / f"{name}.json"
    if not prev_path.exists():
        return res
    prev = json.loads(prev_path.read_text())
    other = "peer" if side == "tkc" else "tkc"
    if "status" not in prev.get(other, {"status": 1}):
        res[other] = {**prev[other], "from_earlier_run": prev.get("generated_utc")}
    return res


if __name__ == "__main__":
    out = main()
    print({k: out[k] for k in ("ratios",)}, out["tkc"].get("typo_report_s"), out["peer"].get("typo_report_s"))
