"""Write BENCHMARKS.md from bench/results/*.json. Every figure in it comes from those files, never by hand.

.venv/bin/python bench/report.py [--check]      # --check: exit 1 if BENCHMARKS.md is stale
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, ratio, step_rates  # noqa: E402
from report_estimator import section_estimator  # noqa: E402
from report_serve import section_serve  # noqa: E402

OUT = ROOT / "BENCHMARKS.md" if RESULTS == ROOT / "bench" / "results" else RESULTS / "BENCHMARKS.md"
DASH = "—"
PEER_T = "peer_matched_threads"
PAD_KEY = "step_tokens_per_s_p90_padding_neutral"


def _cv(xs: list[float]) -> float | None:
    """Coefficient of variation: how much a per-step figure varies, relative to its mean."""
    return statistics.pstdev(xs) / statistics.fmean(xs) if len(xs) >= 2 else None


def _load(name: str) -> dict:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def f(x, digits: int = 2, unit: str = "") -> str:
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x:,.{digits}f}{unit}"


def r(x) -> str:
    return DASH if x is None else f"{x:.2f}×"


def pct(x) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def sp(x) -> str:
    """A tkc-vs-peer time ratio (peer ÷ tkc) in words."""
    if x is None:
        return DASH
    return f"{x:.2f}× faster" if x >= 1 else f"{1 / x:.2f}× slower"


def met(ok) -> str:
    return DASH if ok is None else ("met" if ok else "**not met**")


def _side(d: dict, side: str) -> dict:
    s = d.get(side) or {}
    return {} if "status" in s else s


def _note(d: dict, side: str) -> str:
    s = d.get(side) or {}
    if "status" in s:
        return f" ({s['status']})"
    if "from_earlier_run" in s:
        return f" (from the run of {s['from_earlier_run']})"
    return ""


def section_machine(res: dict[str, dict]) -> list[str]:
    any_res = next((v for v in res.values() if v), {})
    m = any_res.get("machine", {})
    tv = res.get("train", {}).get("versions") or {}
    errs = res.get("errors", {})
    tkc_v = tv.get("tkc") or _side(errs, "tkc").get("versions") or {}
    peer_v = tv.get("peer") or _side(errs, "peer").get("versions") or {}
    lines = [
        "## Machine and versions",
        "",
        f"* CPU: {m.get('cpu_model', DASH)}, {m.get('nproc', DASH)} cores (`nproc`), "
        f"{m.get('mem_total_gib', DASH)} GiB RAM (`free`), no GPU; Python {m.get('python', DASH)}, "
        f"kernel {m.get('kernel', DASH)}.",
        "* The machine is shared with other work; the 1/5/15-minute load average at the end of each "
        "benchmark is recorded below. Runs alternate the two tools so that background load falls on both.",
        "* tkc side: " + (", ".join(f"{k} {v}" for k, v in sorted(tkc_v.items())) or DASH),
        "* peer side (its own venv, `bench/.peer/venv`): "
        + (", ".join(f"{k} {v}" for k, v in sorted(peer_v.items())) or DASH),
        "",
    ]
    lines += ["| results file | generated (UTC) | load average at the end |", "|---|---|---|"]
    for name, d in res.items():
        if d:
            lines.append(
                f"| `bench/results/{name}.json` | {d.get('generated_utc', DASH)} | "
                f"{d.get('machine', {}).get('loadavg_1_5_15', DASH)} |"
            )
    return lines + [""]


def _ordered(t: dict) -> list[tuple[str, dict]]:
    order = ["sft_lora", "sft_full", "dpo_lora"]
    w = t.get("workloads") or {}
    return sorted(w.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def _loss_gap(wt: dict, wp: dict) -> tuple[float | None, float | None]:
    """(tkc - peer) of the last-5-step mean loss, and the noise: the larger of the two tools' standard
    deviations of the per-step loss over their last 10 steps (first run)."""
    import statistics

    a, b = wt.get("final_loss_last5"), wp.get("final_loss_last5")
    la, lb = wt.get("losses_first_run") or [], wp.get("losses_first_run") or []
    if a is None or b is None or len(la) < 3 or len(lb) < 3:
        return None, None
    return a - b, max(statistics.stdev(la[-10:]), statistics.stdev(lb[-10:]))


def section_summary(res: dict[str, dict]) -> list[str]:
    e, p, t = res.get("errors", {}), res.get("preprocess", {}), res.get("train", {})
    et, ep = _side(e, "tkc"), _side(e, "peer")
    pt, pp = _side(p, "tkc"), _side(p, "peer")
    rows = [
        "| what | tkc | peer (LLaMA-Factory) | tkc vs peer | target | status |",
        "|---|---|---|---|---|---|",
    ]
    spd = (e.get("ratios") or {}).get("typo_report_speedup")
    fl = (et.get("typo") or {}).get("file_line")
    rows.append(
        f"| misspelled key reported (median s) | {f(et.get('typo_report_s'), 3)} | "
        f"{f(ep.get('typo_report_s'))} | {sp(spd)} | ≥ 25× faster, with file:line | "
        f"{met(None if spd is None else (spd >= 25 and bool(fl)))} |"
    )
    cs = et.get("compile_s")
    rows.append(
        f"| correct recipe compiled (median s) | {f(cs, 3)} | {f(ep.get('config_accepted_s'))} "
        f"(args accepted) | {r((e.get('ratios') or {}).get('validate_speedup'))} faster | < 0.5 s | "
        f"{met(None if cs is None else cs < 0.5)} |"
    )
    pr = (p.get("ratios") or {}).get("cold_throughput")
    rows.append(
        f"| preprocessing, cold (examples/s) | {f(pt.get('cold_examples_per_s'), 0)} | "
        f"{f(pp.get('cold_examples_per_s'), 0)} | {r(pr)} | ≥ 3× | {met(None if pr is None else pr >= 3)} |"
    )
    ps = res.get("preprocess_synthetic") or {}
    if ps:
        sr = (ps.get("ratios") or {}).get("cold_throughput")
        rows.append(
            f"| preprocessing, cold, {ps.get('records', DASH)} synthetic records (examples/s) | "
            f"{f(_side(ps, 'tkc').get('cold_examples_per_s'), 0)} | {f(_side(ps, 'peer').get('cold_examples_per_s'), 0)} | "
            f"{r(sr)} | ≥ 3× | {met(None if sr is None else sr >= 3)} |"
        )
    cr = (p.get("ratios") or {}).get("cached_throughput")
    rows.append(
        f"| preprocessing, cached re-run (examples/s) | {f(pt.get('cached_examples_per_s'), 0)} | "
        f"{f(pp.get('cached_examples_per_s'), 0)} | {r(cr)} | {DASH} | {DASH} |"
    )
    for n, w in _ordered(t):
        wt, wp, ra = _side(w, "tkc"), _side(w, "peer"), w.get("ratios") or {}
        pm, rm_ = _side(w, PEER_T), w.get("ratios_vs_" + PEER_T) or {}
        matched = bool(pm)
        for label, peer, rat, judged in (
            (f"{n}: tokens/s; examples/s (peak RSS GiB), peer at tkc's thread count", pm, rm_, True),
            (
                f"{n}: tokens/s; examples/s (peak RSS GiB), peer at its default threads{_threads_note(w)}",
                wp,
                ra,
                not matched,
            ),
        ):
            if not peer and "thread count" in label:
                continue
            tr, er, mr = rat.get("tokens_per_s"), rat.get("examples_per_s"), rat.get("peak_rss")
            ok = None if tr is None or er is None or mr is None or not judged else (
                tr >= 1.5 and er >= 1.5 and mr <= 1.0)
            rows.append(
                f"| {label} | {f(wt.get('tokens_per_s'), 0)}; {f(wt.get('examples_per_s'))} "
                f"({f(wt.get('peak_rss_gib'))}) | {f(peer.get('tokens_per_s'), 0)}; "
                f"{f(peer.get('examples_per_s'))} ({f(peer.get('peak_rss_gib'))}) | {r(tr)}; {r(er)} "
                f"({r(mr)} memory) | ≥ 1.5× at ≤ 1× memory | {met(ok) if judged else 'see above'} |"
            )
        ref, rref = (pm, rm_) if matched else (wp, ra)
        p9 = rref.get(PAD_KEY)
        rows.append(
            f"| {n}: per-step tokens/s of the least disturbed steps (90th pct., padding-neutral; see 3)"
            f"{', matched threads' if matched else ''} | {f(wt.get(PAD_KEY), 0)} | {f(ref.get(PAD_KEY), 0)} | "
            f"{r(p9)} | ≥ 1.5× | {met(None if p9 is None else p9 >= 1.5)} |"
        )
        dl, noise = _loss_gap(wt, ref)
        rows.append(
            f"| {n}: final loss, mean of last 5 steps (noise) | {f(wt.get('final_loss_last5'), 4)} | "
            f"{f(ref.get('final_loss_last5'), 4)} | Δ {f(dl, 4)} (noise {f(noise, 4)}) | abs(Δ) ≤ noise | "
            f"{met(None if dl is None or noise is None else abs(dl) <= noise)} |"
        )
        lf = wt.get("launch_to_first_step_s")
        rows.append(
            f"| {n}: launch → first step (s) | {f(lf)} | {f(ref.get('launch_to_first_step_s'))} | "
            f"{sp(rref.get('launch_to_first_step_speedup'))} | ≤ 5 s | {met(None if lf is None else lf <= 5)} |"
        )
    mm = res.get("matmul") or {}
    for n, w in _ordered(t):
        ref = _side(w, PEER_T) or _side(w, "peer")
        mt, mp = _mfu(w, _side(w, "tkc"), mm), _mfu(w, ref, mm)
        if mt is not None:
            rows.append(
                f"| {n}: model FLOPs utilisation (of {f(mm.get('peak_gflops'), 0)} GFLOPS fp32 matmul, "
                f"{mm.get('threads')} threads) | {pct(mt)} | {pct(mp)} | {r(None if not mp else mt / mp)} | "
                f"reported | — |"
            )
    rows += _repeat_rows(res.get("repeat_train") or {})
    rows += determinism_summary_row(res.get("determinism") or {})
    return ["## Summary", "", *rows, ""]


LORA_TARGETS = 7  # q, k, v, o, gate, up, down (bench/workloads.py)


def model_flops_per_token(c: dict, shape: dict, mean_len: float) -> float:
    """Training FLOPs per (non-padding) token the workload's semantics need, by the usual matmul count (Kaplan /
    PaLM): every linear layer and the LM head at every token, attention scores and values at the mean causal
    context (mean row length + 1) / 2. Full: forward + 2x backward. LoRA: the frozen base needs forward and
    input gradients only (2x), attention 3x, the adapters 6x. DPO adds the reference forward (adapter off). Not
    counted: elementwise ops, recomputation. The same figure for both tools, so the MFU ratio is the throughput
    ratio; it says how much of the machine's matmul speed each tool turns into training."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    inter, vocab = shape["intermediate_size"], shape["vocab_size"]
    kvd = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    shapes = [(h, h), (h, kvd), (h, kvd), (h, h), (h, inter), (h, inter), (inter, h)]
    n_lin = layers * sum(i * o for i, o in shapes) + h * vocab
    att = 4 * layers * h * (mean_len + 1) / 2
    if c.get("method") == "full":
        total = 3 * (2 * n_lin + att)
    else:
        n_lora = layers * (c.get("lora_rank") or 0) * sum(i + o for i, o in shapes[:LORA_TARGETS])
        total = 2 * (2 * n_lin) + 3 * att + 6 * n_lora
    if c.get("kind") == "dpo":
        total += 2 * n_lin + att
    return total


def _mean_len(c: dict, tokens: int) -> float:
    """Mean tokens per trained sequence (a DPO pair is two)."""
    return tokens / (c["steps"] * c["batch"] * (2 if c.get("kind") == "dpo" else 1))


def _mfu(w: dict, side: dict, mm: dict | None) -> float | None:
    """Model FLOPs per second / the measured fp32 matmul peak (bench/matmul.py), for one tool's side."""
    c, tps, tokens = w.get("config", {}), side.get("tokens_per_s"), side.get("tokens")
    if not mm or not mm.get("peak_gflops") or not tps or not tokens or not c.get("steps"):
        return None
    return tps * model_flops_per_token(c, mm["model"], _mean_len(c, tokens)) / (mm["peak_gflops"] * 1e9)


def section_mfu(t: dict, mm: dict) -> list[str]:
    if not mm:
        return []
    sizes = ", ".join(f"{n}: {f(g, 0)}" for n, g in sorted((int(k), v) for k, v in mm["gflops_by_size"].items()))
    out = [
        "### Model FLOPs utilisation",
        "",
        f"Command: `.venv/bin/python bench/matmul.py` (measured {mm.get('generated_utc', DASH)}): fp32 `torch.mm` of "
        f"n × n matrices at {mm.get('threads')} threads, the count both tools train with, median of "
        f"{mm.get('reps')} products per size, GFLOPS by n: {sizes}; peak {f(mm.get('peak_gflops'), 0)}. "
        "MFU = tokens/s × model FLOPs per token ÷ that peak. Model FLOPs per token "
        "(`model_flops_per_token` in bench/report.py) count every linear layer and the LM head at every token and "
        "attention at the mean causal context: full = 3× the forward; LoRA = 2× the frozen base's linear layers "
        "(forward and input gradients), 3× attention, 6× the adapters; DPO adds the reference forward. The same "
        "count for both tools, so the ratio is the throughput ratio. Work outside matmuls (elementwise ops, "
        "attention kernels, Python dispatch) is not in the count.",
        "",
        "| workload | model GFLOPs per 1,000 tokens | tkc MFU | peer MFU |",
        "|---|---|---|---|",
    ]
    for n, w in _ordered(t):
        c, wt = w.get("config", {}), _side(w, "tkc")
        ref = _side(w, PEER_T) or _side(w, "peer")
        if not wt.get("tokens") or not c.get("steps"):
            continue
        per_k = model_flops_per_token(c, mm["model"], _mean_len(c, wt["tokens"])) * 1000 / 1e9
        out.append(f"| {n} | {f(per_k, 1)} | {pct(_mfu(w, wt, mm))} | {pct(_mfu(w, ref, mm))} |")
    return out + [""]


def _threads_note(w: dict) -> str:
    """' (2, as tkc)' when the peer's default thread count is tkc's: that row is the matched comparison."""
    pd, td = w.get("peer_default_threads"), w.get("tkc_cpu_threads")
    if pd is None:
        return ""
    return f" ({pd}, as tkc)" if pd == td else f" ({pd}; tkc {td})"


def _repeat_rows(rt: dict) -> list[str]:
    """An independent repeat of a training benchmark (bench/results/repeat_train.json, e.g. from
    `TKC_BENCH_RESULTS=DIR bench/run_all.py --quick`): shown beside the main figures, not merged."""
    rows = []
    for n, w in _ordered(rt):
        wt, pm, rm_ = _side(w, "tkc"), _side(w, PEER_T), w.get("ratios_vs_" + PEER_T) or {}
        matched_default = w.get("peer_default_threads") is not None and (
            w.get("peer_default_threads") == w.get("tkc_cpu_threads")
        )
        if not pm and matched_default:  # the peer's default row is the matched one (no second row ran)
            pm, rm_ = _side(w, "peer"), w.get("ratios") or {}
        if not pm:
            continue
        rows.append(
            f"| {n}, independent repeat ({rt.get('generated_utc', DASH)}): tokens/s; 90th-pct. step "
            f"(padding-neutral), matched threads | {f(wt.get('tokens_per_s'), 0)}; {f(wt.get(PAD_KEY), 0)} | "
            f"{f(pm.get('tokens_per_s'), 0)}; {f(pm.get(PAD_KEY), 0)} | "
            f"{r(rm_.get('tokens_per_s'))}; {r(rm_.get(PAD_KEY))} | ≥ 1.5× | "
            + "; ".join(met(None if rm_.get(k) is None else rm_[k] >= 1.5) for k in ("tokens_per_s", PAD_KEY))
            + " |"
        )
    return rows


def section_errors(e: dict) -> list[str]:
    et, ep = _side(e, "tkc"), _side(e, "peer")
    out = [
        "## 1. Reporting a mistake in a config",
        "",
        "Command: `.venv/bin/python bench/errors.py`. The same SFT+LoRA config with `learning_rate` "
        "misspelled `learning_rat`. tkc: `tkc compile typo.yaml -o DIR`; peer: `llamafactory-cli train "
        "typo.yaml`. Wall time from launch to exit, median of "
        f"{(e.get('reps') or {}).get('tkc', DASH)} (tkc) and {(e.get('reps') or {}).get('peer', DASH)} (peer) runs. "
        "The peer has no validate-only command; its 'correct config' figure is launch → its "
        "`Process rank` log line (arguments parsed and checked, before any data is read).",
        "",
        "| | tkc" + _note(e, "tkc") + " | peer" + _note(e, "peer") + " |",
        "|---|---|---|",
        f"| typo reported (median s) | {f(et.get('typo_report_s'), 3)} | {f(ep.get('typo_report_s'))} |",
        f"| runs (s) | {et.get('typo_runs_s', DASH)} | {ep.get('typo_runs_s', DASH)} |",
        f"| exits non-zero | {f((et.get('typo') or {}).get('exit_nonzero'))} | {f((ep.get('typo') or {}).get('exit_nonzero'))} |",
        f"| names the key | {f((et.get('typo') or {}).get('names_key'))} | {f((ep.get('typo') or {}).get('names_key'))} |",
        f"| gives file:line (`{(et.get('typo') or ep.get('typo') or {}).get('expected_location', DASH)}`) | "
        f"{f((et.get('typo') or {}).get('file_line'))} | {f((ep.get('typo') or {}).get('file_line'))} |",
        f"| correct config compiled / accepted (median s) | {f(et.get('compile_s'), 3)} | {f(ep.get('config_accepted_s'))} |",
        f"| speed-up, typo report | {r((e.get('ratios') or {}).get('typo_report_speedup'))} | |",
        "",
    ]
    for side, s in (("tkc", et), ("peer", ep)):
        msg = (s.get("typo") or {}).get("message")
        if msg:
            out += [f"{side}'s message (last lines):", "", "```", *[m[:160] for m in msg[-4:]], "```", ""]
    return out


def section_preprocess(p: dict) -> list[str]:
    pt, pp = _side(p, "tkc"), _side(p, "peer")
    ra = p.get("ratios") or {}
    return [
        "## 2. Preprocessing",
        "",
        f"Command: `.venv/bin/python bench/preprocess.py`. All {p.get('records', DASH)} records of "
        f"`{p.get('dataset', DASH)}`, Qwen ChatML with the default system prompt, cutoff {p.get('cutoff', DASH)}, "
        f"one process each (the peer's default), median of {p.get('reps', DASH)} cold + cached pairs. "
        "tkc: `build_stage_data` as `tkc run` calls it (sha256 check, read, convert, tokenize, write the "
        "Arrow cache), timed in-process by `bench/tkc_prep.py` after library imports. Peer: from its "
        "`Loading dataset` log line to its `training example:` line (read, convert, tokenize; its imports "
        "are done by then). Launch → data ready includes everything for both. Cold = empty cache; cached = the same "
        "command again.",
        "",
        "| | tkc" + _note(p, "tkc") + " | peer" + _note(p, "peer") + " | tkc / peer |",
        "|---|---|---|---|",
        f"| cold: seconds | {f(pt.get('cold_prep_s'), 3)} | {f(pp.get('cold_prep_s'), 3)} | |",
        f"| cold: examples/s | {f(pt.get('cold_examples_per_s'), 0)} | {f(pp.get('cold_examples_per_s'), 0)} | {r(ra.get('cold_throughput'))} |",
        f"| cached re-run: seconds | {f(pt.get('cached_prep_s'), 3)} | {f(pp.get('cached_prep_s'), 3)} | |",
        f"| cached re-run: examples/s | {f(pt.get('cached_examples_per_s'), 0)} | {f(pp.get('cached_examples_per_s'), 0)} | {r(ra.get('cached_throughput'))} |",
        f"| launch → data ready, cold (s) | {f(pt.get('cold_launch_to_data_s'))} | {f(pp.get('cold_launch_to_data_s'))} | {sp(ra.get('cold_launch_to_data_speedup'))} |",
        f"| tkc only: rows → Python lists afterwards, as its stages do (s) | {f(pt.get('materialize_s'), 3)} | | |",
        f"| peer's own tqdm rate for its tokenize step (examples/s) | | {f(pp.get('tqdm_tokenize_rate_median'), 0)} | |",
        "",
    ]


def section_preprocess_synthetic(p: dict) -> list[str]:
    if not p:
        return []
    pt, pp = _side(p, "tkc"), _side(p, "peer")
    ra = p.get("ratios") or {}
    n = p.get("records", DASH)
    return [
        f"### Preprocessing at scale: {n} synthetic records",
        "",
        f"Command: `.venv/bin/python bench/preprocess.py --synthetic {n}`. {n} alpaca records made from the demo "
        "file's own instructions, inputs and outputs (three different demo records each, numbered; see the "
        "script), same settings and windows as above, median of "
        f"{p.get('reps', DASH)} cold + cached pairs. tkc renders and tokenizes in its worker processes (spawned, "
        "one per 5000 records up to the cores: 2 here); the peer in one process, its default.",
        "",
        "| | tkc" + _note(p, "tkc") + " | peer" + _note(p, "peer") + " | tkc / peer |",
        "|---|---|---|---|",
        f"| cold: seconds | {f(pt.get('cold_prep_s'), 2)} | {f(pp.get('cold_prep_s'), 2)} | |",
        f"| cold: examples/s | {f(pt.get('cold_examples_per_s'), 0)} | {f(pp.get('cold_examples_per_s'), 0)} | {r(ra.get('cold_throughput'))} |",
        f"| cached re-run: seconds | {f(pt.get('cached_prep_s'), 3)} | {f(pp.get('cached_prep_s'), 3)} | |",
        f"| launch → data ready, cold (s) | {f(pt.get('cold_launch_to_data_s'))} | {f(pp.get('cold_launch_to_data_s'))} | {sp(ra.get('cold_launch_to_data_speedup'))} |",
        "",
    ]


METRICS = [  # (label, key, digits, ratio key or None, how the ratio reads)
    ("tokens processed", "tokens", 0, None, ""),
    ("training wall (s), median", "train_wall_s", 1, None, ""),
    ("tokens/s", "tokens_per_s", 0, "tokens_per_s", "x"),
    ("examples/s (records ÷ training wall)", "examples_per_s", 2, "examples_per_s", "x"),
    ("per-step tokens/s, median", "step_tokens_per_s_median", 0, "step_tokens_per_s_median", "x"),
    (
        "per-step tokens/s, 90th percentile (for the peer: its least padded batches)",
        "step_tokens_per_s_p90",
        0,
        "step_tokens_per_s_p90",
        "x",
    ),
    ("padding efficiency: real ÷ computed tokens (tkc: unpadded rows)", "padding_efficiency", 3, None, ""),
    ("spread of per-step tokens/s (coefficient of variation)", "step_rate_cv", 3, None, ""),
    ("spread of per-step computed tokens/s, padding included", "computed_step_rate_cv", 3, None, ""),
    (
        "per-step tokens/s, 90th percentile, padding-neutral (least disturbed steps)",
        PAD_KEY,
        0,
        PAD_KEY,
        "x",
    ),
    ("tokens per CPU-second, step 1 → exit", "tokens_per_cpu_s", 0, "tokens_per_cpu_s", "x"),
    ("CPU seconds, whole command", "cpu_s", 1, None, ""),
    ("peak RSS (GiB)", "peak_rss_gib", 2, "peak_rss", "x"),
    ("launch → first step (s)", "launch_to_first_step_s", 2, "launch_to_first_step_speedup", "t"),
    ("launch → exit (s)", "launch_to_exit_s", 1, "launch_to_exit_speedup", "t"),
    ("final loss", "final_loss", 4, None, ""),
    ("final loss, mean of last 5 steps", "final_loss_last5", 4, None, ""),
]


def add_examples_per_s(t: dict) -> dict:
    """Each side's examples/s (the workload's records ÷ training wall, median over its runs; one epoch, so
    every record is trained on once) and its ratio, derived from the results files' per-run walls."""
    for w in (t.get("workloads") or {}).values():
        records = (w.get("config") or {}).get("records")
        for key in ("tkc", "peer", PEER_T):
            side = w.get(key) or {}
            walls = [x["train_wall_s"] for x in side.get("per_run", []) if x.get("ok") and x.get("train_wall_s")]
            if records and walls:
                side["examples_per_s"] = statistics.median(records / x for x in walls)
        _add_ratio(w, "examples_per_s")
    return t


def _add_ratio(w: dict, figure: str) -> None:
    """tkc ÷ peer of a derived figure, beside the ratios bench/train.py wrote (default and matched threads)."""
    for key, rk in (("peer", "ratios"), (PEER_T, "ratios_vs_" + PEER_T)):
        a, b = (w.get("tkc") or {}).get(figure), (w.get(key) or {}).get(figure)
        if rk in w and a and b:
            w[rk][figure] = a / b


SAME_WORKLOAD = ("kind", "method", "dataset_file", "records", "batch", "cutoff", "learning_rate", "seed")


def add_padding_neutral(t: dict, pad: dict) -> dict:
    """Per side, the 90th-percentile step speed with each step's batch composition factored out.

    tkc computes only real tokens (unpadded rows), so its figure is its plain per-step 90th percentile. The
    peer computes every padded position: its step time follows the padded size (bench/padding.py gives it per
    step), so its fastest steps by real tokens/s are its least padded batches. Its padding-neutral figure is
    the 90th percentile of padded tokens/s per step times its padding efficiency (real ÷ padded tokens over
    the same steps): the speed of its least disturbed steps at its average padding. Only peer runs whose
    losses equal bench/padding.py's run (so: the same batches) are used; the matched-threads peer row sums
    in another order, so its losses differ in the last bits and it gets no such figure."""
    for n, w in (t.get("workloads") or {}).items():
        pw = (pad.get("workloads") or {}).get(n) or {}
        padded = pw.get("padded_tokens_cumulative") or []
        same = all((w.get("config") or {}).get(k) == (pw.get("config") or {}).get(k) for k in SAME_WORKLOAD)
        tkc = w.get("tkc") or {}
        if tkc.get("step_tokens_per_s_p90") is not None:  # the bench's recipes train unpadded (tkc's default)
            tkc[PAD_KEY], tkc["padding_efficiency"] = tkc["step_tokens_per_s_p90"], 1.0
            cvs = [_cv(step_rates(x.get("step_marks") or [])) for x in tkc.get("per_run", []) if x.get("ok")]
            cvs = [c for c in cvs if c is not None]
            if cvs:
                tkc["step_rate_cv"] = tkc["computed_step_rate_cv"] = statistics.median(cvs)
        for key in ("peer", PEER_T):
            side = w.get(key) or {}
            figs, effs, spreads = [], [], []
            # every run of a side trained on the same batches when its losses repeat exactly
            same_batches = same and side.get("deterministic") and side.get("losses_first_run") == pw.get("losses")
            for x in side.get("per_run", []):
                marks = x.get("step_marks") or []
                if not (same_batches and x.get("ok") and len(marks) == len(padded)):
                    continue
                steps = [(t1 - t0, c1 - c0, p1 - p0) for (t0, c0), (t1, c1), p0, p1
                         in zip(marks, marks[1:], padded, padded[1:], strict=False) if t1 > t0]
                if len(steps) < 2:
                    continue
                eff = sum(c for _, c, _ in steps) / sum(p for _, _, p in steps)
                figs.append(statistics.quantiles([p / dt for dt, _, p in steps], n=10)[-1] * eff)
                effs.append(eff)
                spreads.append((_cv([c / dt for dt, c, _ in steps]), _cv([p / dt for dt, _, p in steps])))
            if figs:
                side[PAD_KEY] = statistics.median(figs)
                side["padding_efficiency"] = statistics.median(effs)
                side["step_rate_cv"] = statistics.median(a for a, _ in spreads)
                side["computed_step_rate_cv"] = statistics.median(b for _, b in spreads)
        _add_ratio(w, PAD_KEY)
    return t


def _train_table(n: str, w: dict, when: str | None = None) -> list[str]:
    c = w.get("config", {})
    cols = [("tkc" + _note(w, "tkc"), _side(w, "tkc"), None)]
    if _side(w, PEER_T):
        th = (w.get(PEER_T) or {}).get("threads", 1)
        cols.append(
            (
                f"peer, {th} thread (as tkc)" + _note(w, PEER_T),
                _side(w, PEER_T),
                w.get("ratios_vs_" + PEER_T) or {},
            )
        )
    cols.append(
        (
            "peer, default threads" + _threads_note(w) + _note(w, "peer"),
            _side(w, "peer"),
            w.get("ratios") or {},
        )
    )
    peers = cols[1:]
    head = (
        "| | "
        + " | ".join(c_[0] for c_ in cols)
        + " | "
        + " | ".join(f"tkc vs {c_[0].split(' (')[0]}" for c_ in peers)
        + " |"
    )
    rows = [head, "|" + "---|" * (1 + len(cols) + len(peers))]
    for label, key, dg, rk, how in METRICS:
        vals = [f(c_[1].get(key), dg) for c_ in cols]
        rats = [(r if how == "x" else sp)(c_[2].get(rk)) if rk else "" for c_ in peers]
        rows.append(f"| {label} | " + " | ".join(vals) + " | " + " | ".join(rats) + " |")
    each = [
        str([round(x["train_wall_s"], 1) for x in c_[1].get("per_run", []) if x.get("train_wall_s")] or DASH)
        for c_ in cols
    ]
    rows.append("| training wall (s), each run | " + " | ".join(each) + " |" + " |" * len(peers))
    det = [f(c_[1].get("deterministic")) for c_ in cols]
    rows.append("| identical losses across runs | " + " | ".join(det) + " |" + " |" * len(peers))
    ok = [f"{c_[1].get('runs_ok', DASH)}/{c_[1].get('runs', DASH)}" for c_ in cols]
    rows.append("| runs ok | " + " | ".join(ok) + " |" + " |" * len(peers))
    out = [
        f"### {n}: {c.get('kind', '').upper()} {c.get('method', '')}, {c.get('records')} records × 1 epoch, "
        f"batch {c.get('batch')}, {c.get('steps')} steps, cutoff {c.get('cutoff')}, lr {c.get('learning_rate')}",
        "",
        f"Measured {w.get('measured_utc') or when or DASH} (UTC).",
        "",
        *rows,
        "",
    ]
    wp = _side(w, "peer")
    seen = [x.get("peer_num_input_tokens_seen") for x in wp.get("per_run", []) if x.get("ok")]
    if seen:
        out += [
            f"Cross-check: the peer's own `num_input_tokens_seen` (non_padding mode) = {seen[0]:,} "
            f"vs {f(wp.get('tokens'), 0)} counted from its tokenized rows.",
            "",
        ]
    return out


def section_train(t: dict) -> list[str]:
    out = [
        "## 3. Training",
        "",
        "Command: `.venv/bin/python bench/train.py`. "
        + (
            "Tokens = non-padding tokens actually processed, counted from each tool's own tokenized rows; "
            "tokens/s = tokens ÷ the tool's training-loop wall time. Because the machine is shared and "
            "its load swings, companions less sensitive to it are shown: each step's tokens ÷ its duration, "
            "as a median over steps and as a 90th percentile, and tokens per CPU-second of the process tree "
            "from step 1 to exit (inflated for both tools when threads wait on each other under load). "
            "Peak RSS of the whole process tree. "
            f"Medians of {t.get('reps', DASH)} runs per tool (listed below); runs alternate tools and the order "
            "flips every repetition."
        ),
        "",
        "Same rows, order of batches aside, same optimizer steps and loss; what tkc's step does differently (all in "
        "`src/tkc/runtime`): no compute on padding (the peer pads each batch to its longest row): for SFT the "
        "micro-batch's rows run end to end in one forward, each attending to itself only (`attention.py`); for "
        "DPO each pair's shared prompt runs once, the micro-batch's prompts end to end in one forward and its "
        "chosen and rejected continuations in another (`stages/common.py`); the LM head only at label "
        "positions; LoRA layers add their adapter product inside one GEMM instead of peft's scaled copy "
        "(`lora.py`); and the C heap keeps freed memory for the next step instead of faulting it in again "
        "(`memory.py`).",
        "",
        "The per-step 90th percentile is meant as the speed of the steps least disturbed by other jobs, the "
        "closest to an idle machine. For tkc it is: its step time follows the real tokens of the step. The "
        "peer computes every padded position (`bench/padding.py` counts them: the same batches run again with "
        "`include_num_input_tokens_seen: all`), so its step time follows the padded size, and its fastest "
        "steps by real tokens/s are simply its least padded batches (compare the two spread rows: its real "
        "tokens/s per step varies far more than tkc's, its computed tokens/s about as much). The padding-neutral "
        "row takes the 90th percentile of the peer's padded tokens/s per step times its padding efficiency "
        "(real ÷ padded tokens over the same steps): the speed of its least disturbed steps at its average "
        "padding. That row is the one judged; the plain one is kept beside it.",
        "",
    ]
    for n, w in _ordered(t):
        out += _train_table(n, w, t.get("generated_utc"))
    pd = t.get("peer_defaults_sft_lora")
    if pd:
        s = _side(pd, "peer")
        out += [
            f"Peer with its own defaults on sft_lora ({pd.get('differs_by')}): tokens/s {f(s.get('tokens_per_s'), 0)}, "
            f"peak RSS {f(s.get('peak_rss_gib'))} GiB, training wall {f(s.get('train_wall_s'), 1)} s, "
            f"final loss {f(s.get('final_loss'), 4)}.",
            "",
        ]
    return out


def _det_cell(c: dict) -> str:
    """'yes' / 'no (max abs Δ x)' for a loss comparison from bench/determinism.py."""
    if c.get("identical") is None:
        return f"not measured ({c['why']})" if c.get("why") else DASH
    return "yes" if c["identical"] else f"no (max abs Δ {c['max_abs_diff']:.1e})"


def _det_ok(side: dict) -> bool | None:
    """Determinism kept: identical on a repeat, repeatable at 2 ranks (and within tolerance of one process),
    identical after a kill -9 and resume."""
    checks = [(side.get("repeat") or {}).get("identical"), side.get("ranks_kept"),
              (side.get("kill9_resume") or {}).get("identical")]
    return None if any(c is None for c in checks) else all(checks)


def determinism_summary_row(d: dict) -> list[str]:
    def cells(x: dict) -> str:
        if not x:
            return DASH
        return " / ".join(f(c) for c in ((x.get("repeat") or {}).get("identical"),
                                         (x.get("ranks_repeat") or {}).get("identical"),
                                         (x.get("kill9_resume") or {}).get("identical")))

    rows = []
    for n, e in (d.get("workloads") or {}).items():
        dt, dp = _side(e, "tkc"), _side(e, "peer")
        if dt:
            rows.append(
                f"| {n}: identical losses on a repeat / at {d.get('ranks')} ranks, repeated / after kill -9 and "
                f"resume | {cells(dt)} | {cells(dp)} | {DASH} | identical (2 ranks also within "
                f"{100 * d.get('rank_spread', 0):.0f}% of the loss spread from 1 process) | {met(_det_ok(dt))} |"
            )
    return rows


def _det_table(n: str, e: dict, ranks) -> list[str]:
    """One workload's determinism checks, tkc beside the peer."""
    dt, dp = _side(e, "tkc"), _side(e, "peer")
    c = e.get("config") or {}
    rows = [
        f"#### {n}: {c.get('kind', '').upper()} {c.get('method', '')}, {c.get('steps')} steps of "
        f"{c.get('batch')} (measured {e.get('measured_utc', DASH)})",
        "",
        "| | tkc" + _note(e, "tkc") + " | peer" + _note(e, "peer") + " |",
        "|---|---|---|",
    ]

    def run_(x: dict, k: str) -> dict:
        return (x.get("runs") or {}).get(k) or {}

    def vs_one(x: dict) -> str:
        v = x.get("ranks_vs_one_process") or {}
        if v.get("max_abs_diff") is None:
            return DASH
        tol = v.get("tolerance_abs")
        return f"{v['max_abs_diff']:.1e} (allowed {DASH if tol is None else f'{tol:.1e}'})"

    order = ("one_process_0", "one_process_1", "ranks_0", "ranks_1", "kill9")
    checks = [
        ("one process, run twice: identical", lambda x: _det_cell(x.get("repeat") or {})),
        (f"{ranks} ranks, run twice: identical", lambda x: _det_cell(x.get("ranks_repeat") or {})),
        (f"{ranks} ranks vs one process: max abs Δloss", vs_one),
        ("ranks the processes reported", lambda x: f(run_(x, "ranks_0").get("world_size"))),
        ("kill -9 after step, then resumed from", lambda x: f"{f(run_(x, 'kill9').get('killed_after_steps'))}; "
                                                           f"`{run_(x, 'kill9').get('resume_line', DASH)}`"),
        ("steps the resumed run trained", lambda x: f(run_(x, "kill9").get("steps_after_resume"))),
        ("after kill -9 and resume: all losses identical to the uninterrupted run",
         lambda x: _det_cell(x.get("kill9_resume") or {})),
        ("wall (s) of each run (one process ×2, ranks ×2, the resumed run)",
         lambda x: ", ".join(f(run_(x, k).get("wall_s"), 1) for k in order)),
        ("determinism kept (judged)", lambda x: met(_det_ok(x))),
    ]
    rows += [f"| {label} | {fn(dt) if dt else DASH} | {fn(dp) if dp else DASH} |" for label, fn in checks]
    return rows + [""]


def section_determinism(t: dict, d: dict) -> list[str]:
    rows = [
        "## 4. Determinism",
        "",
        "Are the full-precision per-step losses the same again?",
        "",
    ]
    if d.get("workloads"):
        rows += [
            "### Repeats, ranks and a kill -9 resume",
            "",
            f"Command: `.venv/bin/python bench/determinism.py` (measured {d.get('generated_utc', DASH)}). "
            "Every check compares all per-step losses with the first one-process run at full precision. "
            f"{d.get('ranks')} ranks: two processes with the same global batch (half of it per rank): tkc through "
            "its bundle's torchrun script (gloo on CPU), the peer through its own multi-process launch "
            f"(`FORCE_TORCHRUN=1`). kill -9: a checkpoint every {d.get('save_every')} steps, SIGKILL to the "
            f"whole process group when step {d.get('kill_at_step')} is reported, then the same run again from its "
            "checkpoint (tkc: `tkc run` again, which resumes by itself; the peer: `resume_from_checkpoint`, its "
            "documented way). A check whose premise failed (a run that did not report 2 ranks; a run that was not "
            "killed mid-way and resumed) reads 'not measured'.",
            "",
        ]
    for n, e in (d.get("workloads") or {}).items():
        rows += _det_table(n, e, d.get("ranks"))
    if d.get("workloads"):
        rows += [
            "Two ranks are not expected to give bit-equal losses to one process: each rank sums its own rows' "
            "gradients and the all-reduce adds the two sums, so float additions happen in another order, and "
            "Adam carries those last-bit differences into later steps (DPO's loss, a difference of two "
            "log-probability sums, shows them most). Judged for them: the 2-rank run repeats exactly, and stays "
            f"within {100 * d.get('rank_spread', 0):.0f}% of the one-process run's loss spread (the standard "
            "deviation of its per-step losses).",
            "",
        ]
    rows += [
        "### Every training workload, run again (from `bench/train.py`)",
        "",
        "| workload | tkc identical | tkc max abs Δloss | peer identical | peer max abs Δloss "
        "| peer at 1 thread identical | its max abs Δloss |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, w in _ordered(t):
        wt, wp, pm = _side(w, "tkc"), _side(w, "peer"), _side(w, PEER_T)
        rows.append(
            f"| {n} | {f(wt.get('deterministic'))} | {f(wt.get('max_loss_diff_between_runs'), 6)} | "
            f"{f(wp.get('deterministic'))} | {f(wp.get('max_loss_diff_between_runs'), 6)} | "
            f"{f(pm.get('deterministic'))} | {f(pm.get('max_loss_diff_between_runs'), 6)} |"
        )
    return rows + [""]


def section_parity(pa: dict) -> list[str]:
    out = [
        "## Token parity (the two tools see the same tokens)",
        "",
        "Command: `.venv/bin/python bench/parity.py`. Every record tokenized by both tools "
        f"(peer: {(pa.get('template') or {}).get('peer', DASH)}; tkc: {(pa.get('template') or {}).get('tkc', DASH)}), "
        "rows matched on their token ids (each tool stores rows in its own order).",
        "",
        "| case | records (tkc / peer) | identical input_ids | identical labels | label tokens only the peer trains on | only tkc |",
        "|---|---|---|---|---|---|",
    ]
    for k, c in (pa.get("cases") or {}).items():
        if "error" in c:
            out.append(f"| {k} | {DASH} | {DASH} | {DASH} | {c['error'][:120]} | |")
            continue
        n, lp, lt = (
            c["records"],
            c.get("label_tokens_trained_only_by_peer") or {},
            c.get("label_tokens_trained_only_by_tkc") or {},
        )

        def mc(d: dict) -> str:
            return ", ".join(f"`{json.dumps(t)}` ×{m}" for t, m in d.get("most_common", [])) or DASH

        out.append(
            f"| {k} | {n['tkc']} / {n['peer']} | {c['identical_input_ids']} | {c['identical_labels']} | "
            f"{lp.get('count', DASH)} ({mc(lp)}) | {lt.get('count', DASH)} ({mc(lt)}) |"
        )
    return out + [
        "",
        "At the large cutoff (16384, above every record's length) the input ids show whether the chat formats agree; at 512 rows that differ "
        "were truncated differently (the tools split the cutoff between prompt and response by "
        "different rules).",
        "",
    ]


STATIC = """## Reading these figures

* The machine is shared with other jobs (see the load averages above); wall-clock figures swing by 2× or
  more between identical runs. Each table shows every run, the runs alternate the two tools, and the
  per-step median and per-CPU-second figures are given because they move less with the load.
* The machine's speed also shifts for minutes at a time (the same bundle, run back to back, lands on one
  of two levels), and such a phase can move a ratio as well as both sides; hence medians of several
  alternating runs per tool (each section says how many).
* How much to trust a ratio: compare the main run with the independent repeat in the summary (same
  commands, another time of day). Where they disagree, the difference between the tools is smaller than
  the machine's noise.
* Final losses are not expected to be bit-equal across tools: each tool shuffles the same records in its
  own order, and (see Token parity) the peer also trains on the newline after `<|im_end|>`, which tkc
  masks. "Same within noise" is judged against the spread of the per-step losses.
* Tokens are counted, not estimated: both sides count the non-padding tokens of the rows they trained on
  (for SFT the peer's own `num_input_tokens_seen` in "non_padding" mode agrees exactly with the count).

## How to reproduce

```bash
.venv/bin/python bench/peer.py         # once: the peer's private venv (bench/.peer/venv, gitignored)
make bench                             # = .venv/bin/python bench/run_all.py  (~27 min here; --quick ~6 min)
.venv/bin/python bench/errors.py       # or each alone: errors, preprocess, parity, matmul, train, padding, determinism
.venv/bin/python bench/report.py       # rewrite this file from bench/results/*.json
```

Each script takes `--side tkc|peer|both` (the other side's figures are then kept from the previous results
file and marked as such) and `--quick`. Scratch files go to `bench/.work/` (gitignored).

The shared workload: a tiny Qwen2-architecture model (hidden 256, 4 layers, 4 heads, 2 KV heads,
intermediate 1024, tied embeddings) built by `tkc.runtime.tiny` with seeded random weights saved as
safetensors (`bench/tiny_assets.py`), and its byte-level BPE tokenizer with ChatML special tokens and
Qwen2's own pre-tokenizer. Both tools load these same files. Data is read from `/work/shared/datasets`
(override with `TKC_BENCH_DATASETS`), never copied.

## The peer and its venv workaround

LLaMA-Factory 0.9.5 from PyPI (the newest release; it accepts transformers ≤ 5.6.0, so its venv has
transformers 5.6.0, peft 0.18.1, trl 0.24.0, datasets 4.0.0, torch 2.13.0+cpu — pinned in
`bench/peer-lock.txt`). It is driven only through `llamafactory-cli train cfg.yaml`; nothing of it is
imported by or copied into tkc. `bench/peer.py` installs `torch==2.13.0` first (an open range would pull a
multi-GB CUDA build), then the lock file, then applies this workaround inside the peer venv only:

* the registry's torchvision build does not load beside CPU torch 2.13.0 (`operator torchvision::nms does
  not exist`): it is uninstalled (text-only training never uses it);
* the registry's torchaudio build fails to load its native library (`Could not load this library:
  .../_torchaudio.abi3.so`), yet LLaMA-Factory imports torchaudio even for text-only training: its
  `torchaudio/lib/*.so` files are renamed `*.so.disabled`, so torchaudio imports as pure Python without
  its extension, which text-only runs never call.

Matched settings (`bench/workloads.py`): same model files, first N records, Qwen ChatML with Qwen2.5's
default system prompt inserted on both sides (peer template `qwen`, tkc template `qwen2_5`), cutoff 512,
batch 4 (no accumulation), 1 epoch, seed 42, AdamW, lr cosine without warmup, weight decay 0, clip 1.0,
LoRA r 8 / alpha 16 / dropout 0 on q,k,v,o,gate,up,down, fp32, gradient checkpointing off (the peer's
default is on: shown as a separate row), one data process, no eval, no checkpoints. Threads: tkc's `cpu`
hardware profile pins the node's intra-op threads in the bundle (`launch.cpu_threads` = 2, so float
reductions run in the same order on every host); the peer uses torch's default, one per physical core. When
that default differs from tkc's count, the peer also runs with `OMP_NUM_THREADS` = tkc's count (matched,
judged against the targets); on a 2-core machine its default row is the matched one. DPO: sigmoid loss,
beta 0.1, reference = the frozen base (adapter disabled).
"""


def _gib(x) -> str:
    return DASH if x is None else f"{x:.2f}"


def _scaling_cell(c: dict) -> str:
    if not c:
        return DASH
    if not c.get("ok"):
        return f"failed: {' '.join((c.get('error') or ['?'])[-1:])[:160]}"
    per_rank = " + ".join(f"{g:.2f}" for g in c.get("peak_rss_per_rank_gib") or [])
    return f"{f(c.get('tokens_per_s'), 0)} ({f(c.get('step_tokens_per_s_median'), 0)}); {per_rank or DASH}"


def section_scaling(sc: dict) -> list[str]:
    """bench/scaling.py: 2 ranks x 1 thread against 1 rank x 2 threads, per strategy, and the peer's ZeRO-3."""
    lines = ["## Scaling on CPU: 2 ranks × 1 thread against 1 rank × 2 threads", ""]
    if not sc:
        return lines + ["Not measured yet (`.venv/bin/python bench/scaling.py`).", ""]
    c = sc.get("config") or {}
    lines += [
        f"Full SFT of the bench's tiny Qwen2 on the first {c.get('records', DASH)} alpaca records: global batch "
        f"{c.get('global_batch', DASH)} (2 ranks: micro batch {(c.get('global_batch') or 0) // 2} each), cutoff "
        f"{c.get('cutoff', DASH)}, {c.get('steps', DASH)} steps, {c.get('precision', DASH)}; every run compiled by "
        "`tkc compile` and started by the bundle's own `launch/00-sft.sh` (torchrun over gloo; "
        "`DS_ACCELERATOR=cpu` for DeepSpeed). Cells: tokens/s over the training loop (median per-step tokens/s "
        "of steps 2..N); peak RSS per rank in GiB. Few steps, the fastest of "
        f"{c.get('reps', 1)} repetitions, so read the ratios as rough, and with the load average below: on a "
        "loaded machine a process of 2 threads loses far more than 2 processes of 1 thread (each of its parallel "
        "regions waits for the thread that is descheduled), which moves the 1 × 2 column most. On 2 cores, 2 ranks "
        "pay for gradient exchange (DDP, ZeRO-2) and weight gathers (ZeRO-3, FSDP2) that one process does not, "
        "so 2×1 ÷ 1×2 below 1× is the expected cost of sharding here, not a speed-up target. 1 × 2 under FSDP2 is "
        "one process (FSDP needs 2 ranks); under DeepSpeed it is one rank through the same engine.",
        "",
        "| strategy | 2 ranks × 1 thread | 1 rank × 2 threads | tokens/s, 2×1 ÷ 1×2 | peak RSS per rank, 2×1 ÷ 1×2 |",
        "|---|---|---|---|---|",
    ]
    names = {"ddp": "DDP (1×2: one process)", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3",
             "fsdp2": "FSDP2"}
    for key, row in sorted((sc.get("rows") or {}).items(), key=lambda kv: list(names).index(kv[0])):
        if "status" in row:
            lines.append(f"| {names.get(key, key)} | {DASH} ({row['status']}) | {DASH} | {DASH} | {DASH} |")
            continue
        lines.append(f"| {names.get(key, key)} | {_scaling_cell(row.get('2x1') or {})} | "
                     f"{_scaling_cell(row.get('1x2') or {})} | {r(row.get('tokens_per_s_ratio_2x1_vs_1x2'))} | "
                     f"{r(row.get('peak_rss_ratio_2x1_vs_1x2'))} |")
    p = sc.get("peer_zero3_2x1") or {}
    cell = _scaling_cell(p) if "status" not in p else f"{DASH} ({p['status']})"
    lines += [f"| LLaMA-Factory DeepSpeed ZeRO-3 (peer) | {cell} | {DASH} | {DASH} | {DASH} |", ""]
    z3 = ((sc.get("rows") or {}).get("zero3") or {}).get("2x1") or {}
    if p.get("ok") and z3.get("ok"):
        lines += [f"ZeRO-3, 2 ranks × 1 thread, tkc ÷ peer: {r(ratio(z3.get('tokens_per_s'), p.get('tokens_per_s')))} "
                  f"tokens/s, {r(ratio(z3.get('peak_rss_max_rank_gib'), p.get('peak_rss_max_rank_gib')))} peak RSS "
                  f"per rank (tokens: tkc {f(z3.get('tokens'))}, peer {f(p.get('tokens'))}).", ""]
    m = sc.get("machine") or {}
    when = {k: v.get("measured_utc") for k, v in [*(sc.get("rows") or {}).items(), ("peer", p)] if v.get("measured_utc")}
    lines += [f"Measured {sc.get('generated_utc', DASH)} (each row: "
              f"{', '.join(f'{k} {t}' for k, t in when.items()) or DASH}); load average at the end "
              f"{m.get('loadavg_1_5_15', DASH)}.", ""]
    return lines


def section_gpu(g: dict) -> list[str]:
    """scripts/gpu_check.py's gpu_check.json, copied to bench/results/ from a GPU run; else 'not measured'."""
    lines = ["## GPU (`make gpu-check`)", ""]
    if not g or g.get("device") != "cuda":
        return lines + [
            "Not measured on a GPU. `make gpu-check` (scripts/gpu_check.py; wheels for a bare machine from "
            "scripts/gpu_wheels.sh) trains a ~100M-parameter Llama built locally with bf16 LoRA and full SFT, "
            "1-GPU DeepSpeed ZeRO-2 and ZeRO-3 through the bundles' launch scripts and a deterministic repeat, "
            "and prints tokens/s, MFU, peak memory and the compile-time estimate's error; its "
            "`gpu_check.json` copied to `bench/results/gpu_check.json` fills this section.",
            "",
        ]
    pk = g.get("peak") or {}
    lines += [
        f"{g.get('device_name', DASH)}; bf16 peak: datasheet {f(pk.get('table_tflops'), 1)} TFLOP/s, measured "
        f"(8192³ matmul) {f(pk.get('measured_tflops'), 1)} TFLOP/s; model {f(g.get('params'))} parameters; "
        f"versions {', '.join(f'{k} {v}' for k, v in sorted((g.get('versions') or {}).items()))}; "
        f"environment drift allowed: {'; '.join(g.get('env_drift') or []) or 'none'}; measured {g.get('generated_utc')}.",
        "",
        "| run | tokens/s | MFU (datasheet) | MFU (measured peak) | peak memory GiB | memory estimate error | "
        "step time estimate error |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in (g.get("runs") or {}).items():
        if not x.get("ok"):
            lines.append(f"| {name} | {x.get('status') or 'failed (exit ' + str(x.get('exit')) + ')'} | | | | | |")
            continue
        e = x.get("estimate") or {}
        mem = x.get("peak_memory_allocated")
        lines.append(f"| {name} | {f(x.get('tokens_per_s'), 0)} | {pct(x.get('mfu_vs_table'))} | "
                     f"{pct(x.get('mfu_vs_measured'))} | {_gib(mem / 2**30 if mem else None)} | "
                     f"{e.get('status') or pct(e.get('memory_error'))} | {pct(e.get('step_time_error'))} |")
    rep = g.get("repeat") or {}
    return lines + ["", f"Deterministic repeat (full SFT twice): {f(rep.get('deterministic'))}.", ""]


def render() -> str:
    res = {
        n: _load(n)
        for n in ("errors", "preprocess", "preprocess_synthetic", "parity", "train", "repeat_train", "matmul",
                  "determinism", "padding", "scaling", "gpu_check", "estimator", "serve")
    }
    for t in (res["train"], res["repeat_train"]):
        add_examples_per_s(t)
        add_padding_neutral(t, res["padding"])
    parts = [
        "# Benchmarks: tkc vs LLaMA-Factory",
        "",
        "<!-- generated by bench/report.py from bench/results/*.json; edit the generator, not this file -->",
        "",
        "Side-by-side on the same tiny model, data and settings. Ratios are tkc ÷ peer for rates and "
        "peer ÷ tkc for times (so > 1× favours tkc), except memory (tkc ÷ peer, < 1× favours tkc). "
        "A dash means not measured; the text next to a tool says why.",
        "",
    ]
    parts += section_summary(res)
    parts += section_errors(res["errors"]) + section_preprocess(res["preprocess"])
    parts += section_preprocess_synthetic(res["preprocess_synthetic"])
    parts += section_train(res["train"]) + section_mfu(res["train"], res["matmul"])
    parts += section_determinism(res["train"], res["determinism"]) + section_parity(res["parity"])
    parts += section_scaling(res["scaling"]) + section_gpu(res["gpu_check"])
    parts += section_estimator(res["estimator"])
    parts += section_serve(res["serve"])
    parts += section_machine(res)
    parts += [STATIC]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        stale = not OUT.exists() or OUT.read_text() != text
        print("BENCHMARKS.md is stale: run bench/report.py" if stale else "BENCHMARKS.md is current")
        return int(stale)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
