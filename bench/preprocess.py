"""Benchmark 2: preprocessing throughput (examples/s), cold and cached re-run, on alpaca_en_demo (999 records).

    .venv/bin/python bench/preprocess.py [--reps N] [--quick] [--side both|tkc|peer]

Both tools read the shared file, convert alpaca records to ChatML turns (Qwen default system prompt) and
tokenize with the same tiny tokenizer at cutoff 512.
peer: `llamafactory-cli train cfg.yaml`; prep time = arrival of its "Loading dataset" log line -> arrival of
      its "training example:" line (JSON load + format conversion + tokenization, single process, the
      default); the process is killed there. Cold = fresh HF datasets cache; cached = same cache again.
tkc:  bench/tkc_prep.py times `tkc.runtime.data.build_stage_data` as `tkc run` calls it (verify sha256 +
      read + convert + tokenize + write the Arrow cache), after library imports, like the peer's window.
      Cold = empty cache dir; cached = same dir again.
Also reported: launch -> data ready for the whole command (imports included). Runs alternate the tools.

--synthetic N: the same on N alpaca records made from the demo file's own instructions, inputs and outputs
(record k takes them from three different demo records, chosen by a fixed rule, and is numbered, so no two
records are equal and the text is real), written once to bench/.work/preprocess/synthetic-N/ with a
dataset_info.json for the peer. Results go to bench/results/preprocess_synthetic.json. tkc's data pipeline
then uses its worker processes (spawned; auto-chosen from the record count and cores), the peer its default
(one process).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TKC, TKC_PY, median, ratio, run, save, tkc_ready, tkc_versions  # noqa: E402
from errors import PEER_ENV, _merge_previous  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS, workdir, write_peer_config, write_tkc_recipe  # noqa: E402

N_RECORDS = 999
WORKLOAD = WORKLOADS["sft_lora"]


def peer_once(cfg: Path, cache: Path) -> dict:
    r = run(
        [PEER_CLI, "train", cfg],
        env={**PEER_ENV, "HF_DATASETS_CACHE": str(cache)},
        timeout=300,
        stop_on=r"^training example:",
    )
    start, end = r.first(r"llamafactory\.data\.loader.*Loading dataset"), r.first(r"^training example:")
    rates = [
        float(m.group(1))
        for _, s in r.lines
        if "Running tokenizer" in s
        for m in [re.search(r"([\d.]+) examples/s", s)]
        if m
    ]
    ok = start is not None and end is not None
    return {
        "prep_s": (end - start) if ok else None,
        "e2e_s": end,
        "ok": ok,
        "tqdm_tokenize_rate": rates[-1] if rates else None,
    }


def tkc_once(bundle: Path, cache: Path) -> dict:
    r = run([TKC_PY, Path(__file__).resolve().parent / "tkc_prep.py", bundle, cache], timeout=300)
    out = next((json.loads(s) for _, s in reversed(r.lines) if s.startswith('{"prep_s"')), None)
    if r.returncode != 0 or out is None:
        return {"ok": False, "error": [s for _, s in r.lines][-6:]}
    return {**out, "e2e_s": r.wall_s, "ok": True}


def _side_summary(cold: list[dict], warm: list[dict], n_records: int = N_RECORDS) -> dict:
    def eps(runs: list[dict]) -> float | None:
        m = median([x["prep_s"] for x in runs if x.get("ok")])
        return n_records / m if m else None

    return {
        "cold_prep_s": median([x["prep_s"] for x in cold if x.get("ok")]),
        "cold_examples_per_s": eps(cold),
        "cached_prep_s": median([x["prep_s"] for x in warm if x.get("ok")]),
        "cached_examples_per_s": eps(warm),
        "materialize_s": median([x.get("materialize_s") for x in cold + warm if x.get("ok")]),
        "cold_launch_to_data_s": median([x["e2e_s"] for x in cold if x.get("ok")]),
        "cached_launch_to_data_s": median([x["e2e_s"] for x in warm if x.get("ok")]),
        "runs": {"cold": cold, "cached": warm},
    }


def synthetic(n: int) -> Path:
    """N alpaca records built from the demo file (see the module doc); the folder holding them."""
    from common import DATASETS

    d = workdir("preprocess", f"synthetic-{n}")
    name = f"alpaca_synthetic_{n}"
    if not (d / f"{name}.json").exists():
        src = json.loads((DATASETS / "alpaca_en_demo.json").read_text(encoding="utf-8"))
        m = len(src)
        rows = [
            {
                "instruction": f"{src[k % m]['instruction']} (#{k})",
                "input": src[(k * 7 + 3) % m]["input"],
                "output": src[(k * 13 + 5) % m]["output"],
            }
            for k in range(n)
        ]
        (d / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        info = {name: {"file_name": f"{name}.json"}}
        (d / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return d


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["both", "tkc", "peer"], default="both")
    ap.add_argument(
        "--synthetic", type=int, default=None, metavar="N", help="N synthetic alpaca records instead"
    )
    a = ap.parse_args(argv)
    # the peer's cold pass moves between runs more than tkc's: a median of 5 alternating pairs
    reps = a.reps or (2 if a.quick else 5)
    model = build_assets()
    n_records, result_name = N_RECORDS, "preprocess"
    w = WORKLOAD.__class__(**{**WORKLOAD.__dict__, "records": N_RECORDS})
    d = workdir("preprocess")
    if a.synthetic:
        n_records, result_name = a.synthetic, "preprocess_synthetic"
        name = f"alpaca_synthetic_{n_records}"
        w = WORKLOAD.__class__(
            **{
                **WORKLOAD.__dict__,
                "records": n_records,
                "dataset": name,
                "dataset_file": f"{name}.json",
                "data_dir": synthetic(n_records),
            }
        )
        d = workdir("preprocess", f"run-{n_records}")
    do_tkc = a.side in ("both", "tkc") and tkc_ready("run")
    do_peer = a.side in ("both", "peer")
    if do_peer:
        ensure_peer()
        pcfg = write_peer_config(w, model, d / "peer" / "out", d / "peer" / "cfg.yaml", overwrite_cache=False)
    bundle = d / "tkc" / "run"
    if do_tkc:
        recipe = write_tkc_recipe(w, model, d / "tkc" / "recipe.yaml")
        shutil.rmtree(bundle, ignore_errors=True)
        c = run([TKC, "compile", recipe, "-o", bundle], timeout=120)
        if c.returncode != 0:
            print(c.text[-2000:])
            do_tkc = False
    pc, pw, tc, tw = [], [], [], []
    for i in range(reps):
        if do_tkc:
            cache = d / "tkc" / f"cache-{i}"
            shutil.rmtree(cache, ignore_errors=True)
            tc.append(tkc_once(bundle, cache))
            tw.append(tkc_once(bundle, cache))
        if do_peer:
            cache = d / "peer" / f"hf-cache-{i}"
            shutil.rmtree(cache, ignore_errors=True)
            pc.append(peer_once(pcfg, cache))
            pw.append(peer_once(pcfg, cache))
        print(f"rep {i + 1}/{reps}: tkc {tc[-1:]}{tw[-1:]} peer {pc[-1:]}{pw[-1:]}", flush=True)
    res: dict = {"records": n_records, "dataset": w.dataset_file, "cutoff": w.cutoff, "reps": reps}
    res["tkc"] = (
        {**_side_summary(tc, tw, n_records), "versions": tkc_versions()}
        if do_tkc
        else {
            "status": "not measured: `tkc run` runtime not available"
            if a.side != "peer"
            else "not measured (--side peer)"
        }
    )
    res["peer"] = (
        (
            _side_summary(pc, pw, n_records)
            | {
                "tqdm_tokenize_rate_median": median(
                    [x["tqdm_tokenize_rate"] for x in pc if x.get("tqdm_tokenize_rate")]
                )
            }
        )
        if do_peer
        else {"status": "not measured (--side tkc)"}
    )
    res = _merge_previous(result_name, res, a.side)
    t, p = res["tkc"], res["peer"]
    res["ratios"] = {
        "cold_throughput": ratio(t.get("cold_examples_per_s"), p.get("cold_examples_per_s")),
        "cached_throughput": ratio(t.get("cached_examples_per_s"), p.get("cached_examples_per_s")),
        "cold_launch_to_data_speedup": ratio(p.get("cold_launch_to_data_s"), t.get("cold_launch_to_data_s")),
    }
    res["targets"] = {"throughput_ratio_min": 3.0}
    save(result_name, res)
    return res


if __name__ == "__main__":
    out = main()
    print(out["ratios"])
