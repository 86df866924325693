"""BENCHMARKS.md's "API serving" section, from bench/results/serve.json (bench/serve.py)."""

from __future__ import annotations

DASH = "—"
LATENCY_GOAL = 1.0     # tkc's one-request latency at or below the peer's
THROUGHPUT_GOAL = 3.0  # at least 3x the peer's requests/s with 8 clients


def _f(x, digits: int = 2) -> str:
    return DASH if x is None else f"{x:,.{digits}f}"


def _ratio(x) -> str:
    return DASH if x is None else f"{x:.2f}×"


def _met(ok: bool | None) -> str:
    return DASH if ok is None else ("met" if ok else "**not met**")


ROWS = [("one request, 64 new tokens: latency (s)", "single_latency_s", 3),
        ("one request: completion tokens/s", "single_tokens_per_s", 1),
        ("{clients} clients, {requests} requests: requests/s", "requests_per_s", 2),
        ("{clients} clients: completion tokens/s", "completion_tokens_per_s", 1),
        ("{clients} clients: latency p50 (s)", "latency_p50_s", 2),
        ("{clients} clients: latency p99 (s)", "latency_p99_s", 2),
        ("server ready after start (s)", "ready_s", 1)]


TIMES = ("single_latency_s", "latency_p50_s", "latency_p99_s", "ready_s")


def section_serve(s: dict) -> list[str]:
    lines = ["## API serving: `tkc serve` vs `llamafactory-cli api`", ""]
    if not s:
        return lines + ["Not measured yet (`bench/serve.py`).", ""]
    c, t, p, r = s["config"], s["tkc"], s["peer"], s["ratios"]
    lines += [f"The same model ({c['model']}), prompts and OpenAI client; {c['threads']} torch thread per "
              f"server; best of {c['reps']} alternating reps. The peer runs with `MAX_CONCURRENT` = "
              f"{c['peer_max_concurrent']}: one request at a time; tkc batches concurrent requests.",
              "", "| figure | tkc | LLaMA-Factory | ratio |", "| --- | ---: | ---: | ---: |"]
    for label, key, digits in ROWS:
        fig = label.format(clients=c["clients"], requests=c["requests"])
        low = key in TIMES
        rat = (p.get(key) / t[key] if low else t[key] / p[key]) if p.get(key) and t.get(key) else None
        lines.append(f"| {fig} | {_f(t.get(key), digits)} | {_f(p.get(key), digits)} | {_ratio(rat)} |")
    speed, through = r.get("single_latency_speedup"), r.get("throughput_ratio")
    lines += ["", "Ratios are peer ÷ tkc for times and tkc ÷ peer for rates (> 1× favours tkc). Goals: one-request "
              f"latency at or below the peer's: {_met(None if speed is None else speed >= LATENCY_GOAL)}; "
              f"at least {THROUGHPUT_GOAL:.0f}× its throughput with {c['clients']} clients: "
              f"{_met(None if through is None else through >= THROUGHPUT_GOAL)}.", ""]
    return lines
