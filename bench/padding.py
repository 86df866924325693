"""The tokens the peer computes per step, padding included (tkc computes none: its rows run end to end).

    .venv/bin/python bench/padding.py [--workloads sft_lora,sft_full,dpo_lora]

For each training workload, the peer runs once more exactly as in bench/train.py but with
`include_num_input_tokens_seen: all` (its count of every input_ids entry, padding included) instead of
`non_padding`. Its batches are the same as in bench/train.py's peer runs (same seed and data order; checked:
the same per-step losses to the last bit), so this gives each of those steps' padded size. Timing is not
used. bench/report.py uses it for the padding efficiency (real ÷ computed tokens) and for the padding-neutral
per-step figure: the peer's step time follows its padded size, not its real tokens, so its fastest steps by
real tokens/s are simply its least padded batches. Results: bench/results/padding.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, run, save  # noqa: E402
from errors import PEER_ENV  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from peer import versions as peer_versions  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from train import _peer_marks  # noqa: E402
from workloads import WORKLOADS, Workload, workdir, write_peer_config  # noqa: E402


def peer_padded(w: Workload, model: Path) -> dict:
    d = workdir("padding", w.name)
    shutil.rmtree(d, ignore_errors=True)
    out = d / "out"
    cfg = write_peer_config(w, model, out, d / "cfg.yaml", include_num_input_tokens_seen="all")
    r = run([PEER_CLI, "train", cfg], env={**PEER_ENV, "HF_DATASETS_CACHE": str(d / "hf-cache")}, timeout=900)
    if r.returncode != 0:
        return {"ok": False, "error": [s for _, s in r.lines][-8:]}
    state = json.loads((out / "trainer_state.json").read_text())
    return {
        "ok": True,
        "padded_tokens_cumulative": [c for _, c in _peer_marks(r)],  # after each step, padding included
        "losses": [h["loss"] for h in state["log_history"] if "loss" in h],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; one run per workload either way")
    ap.add_argument("--side", default="both", help="accepted for run_all; this measures the peer only")
    a = ap.parse_args(argv)
    if a.side == "tkc":
        print("padding: the peer's measurement; nothing to do for --side tkc")
        return {}
    ensure_peer()
    model = build_assets()
    train = RESULTS / "train.json"
    main_runs = json.loads(train.read_text()).get("workloads", {}) if train.exists() else {}
    res: dict = {"workloads": {}}
    for n in a.workloads.split(","):
        w = WORKLOADS[n]
        got = peer_padded(w, model)
        theirs = main_runs.get(n, {}).get("peer") or {}
        got["same_batches_as_train_json"] = bool(theirs.get("deterministic")) and (
            got.get("losses") == theirs.get("losses_first_run"))
        got["config"] = {**w.__dict__, "data_dir": str(w.data_dir) if w.data_dir else None, "steps": w.steps}
        res["workloads"][n] = got
        print(n, {k: got.get(k) for k in ("ok", "same_batches_as_train_json")}, flush=True)
    old = RESULTS / "padding.json"
    if old.exists():  # a subset ran: keep the other workloads' earlier figures, with their date
        prev = json.loads(old.read_text())
        for n, entry in prev.get("workloads", {}).items():
            res["workloads"].setdefault(n, {**entry, "measured_utc": entry.get("measured_utc", prev.get("generated_utc"))})
    res["versions"] = {"peer": peer_versions()}
    save("padding", res)
    return res


if __name__ == "__main__":
    main()
