"""API serving: `tkc serve` against LLaMA-Factory's `llamafactory-cli api` on the same tiny model and prompts.

    .venv/bin/python bench/serve.py [--requests 32] [--clients 8] [--reps 2]

Both servers load the bench's tiny Qwen2 (bench/tiny_assets.py) in float32 on the CPU with the same thread count,
render the Qwen2.5 ChatML template (tkc: the catalog's qwen2_5; the peer: its `qwen` template) and decode greedily.
Each is started, warmed with two requests, measured, and stopped before the other starts (alternating order per
rep); one OpenAI client (the `openai` package, from tkc's venv) drives both.

* one request: latency of a chat completion with max_tokens 64 (median of 5), and its completion tokens;
* concurrent: `--clients` threads share `--requests` requests (max_tokens 64, distinct prompts): wall time,
  requests/s, completion tokens/s, p50 and p99 of the per-request latency.

The peer's `api` runs its HF engine behind `MAX_CONCURRENT` (default 1: one request at a time), which is what a
user gets by default; tkc serve batches concurrent requests (tkc.runtime.infer.batching).
Results: bench/results/serve.json; BENCHMARKS.md's "API serving" section (bench/report_serve.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PRIORITY, TKC, ratio, save, tkc_versions  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from peer import versions as peer_versions  # noqa: E402
from tiny_assets import build as build_tiny  # noqa: E402
from workloads import workdir  # noqa: E402

NEW_TOKENS = 64
THREADS = 1  # torch intra-op threads for both servers (OMP_NUM_THREADS): the box is shared, 2 threads thrash
QUESTIONS = [f"What is {a}+{b}? Explain the steps." for a, b in zip(range(11, 99, 7), range(5, 90, 3), strict=False)]
RECIPE = """\
schema_version: 1
name: serve_bench
model: {path: model, init: pretrained}
template: qwen2_5
data:
  datasets:
    q: {path: data/q.jsonl, format: alpaca}
  cutoff_len: 512
stages:
  - {kind: infer, name: infer, datasets: [q], max_new_tokens: 64}
hardware: cpu
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tkc_bundle(model: Path) -> Path:
    """A bundle whose infer stage reads the tiny base model (served as is: no training)."""
    src = workdir("serve", "tkc-src")
    if not (src / "model").exists():
        shutil.copytree(model, src / "model")
    (src / "data").mkdir(exist_ok=True)
    (src / "data" / "q.jsonl").write_text("".join(f'{{"instruction": "{q}", "output": ""}}\n' for q in QUESTIONS))
    (src / "recipe.yaml").write_text(RECIPE)
    out = src.parent / "tkc-run"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([str(TKC), "compile", str(src / "recipe.yaml"), "-o", str(out)], check=True)
    return out


class Served:
    """A server process on a free loopback port, waited for until /v1/models answers."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path):
        self.name, self.port = name, int(env["API_PORT"])
        self.log = open(cwd / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        nice = (lambda: os.nice(PRIORITY)) if PRIORITY else None
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=nice, start_new_session=True)
        self.started = time.perf_counter()
        self.client = self._client()
        self.model = self._wait()
        self.ready_s = time.perf_counter() - self.started

    def _client(self):
        from openai import OpenAI

        return OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=600)

    def _wait(self, timeout: float = 600) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; see {self.log.name}")
            try:
                return self.client.models.list().data[0].id
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start within {timeout} s")

    def ask(self, question: str) -> tuple[float, int]:
        t = time.perf_counter()
        r = self.client.chat.completions.create(model=self.model, max_tokens=NEW_TOKENS, temperature=0,
                                                messages=[{"role": "user", "content": question}])
        return time.perf_counter() - t, r.usage.completion_tokens if r.usage else 0

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()


def start_tkc(bundle: Path, d: Path) -> Served:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "API_PORT": str(port)}
    return Served("tkc", [str(TKC), "serve", str(bundle), "--stage", "infer", "--port", str(port)], env, d)


def start_peer(model: Path, d: Path) -> Served:
    port = free_port()
    cfg = {"model_name_or_path": str(model), "template": "qwen", "infer_backend": "huggingface",
           "infer_dtype": "float32", "trust_remote_code": False}
    (d / "peer_api.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "API_PORT": str(port), "API_HOST": "127.0.0.1",
           "DISABLE_VERSION_CHECK": "1"}
    return Served("peer", [str(PEER_CLI), "api", str(d / "peer_api.yaml")], env, d)


def measure(s: Served, requests: int, clients: int) -> dict:
    for q in QUESTIONS[:2]:
        s.ask(q)  # warm: first-call allocations and lazy imports out of the figures
    single = [s.ask(QUESTIONS[0]) for _ in range(5)]
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    todo = list(range(requests))

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            lat, n = s.ask(QUESTIONS[i % len(QUESTIONS)])
            with lock:
                latencies.append(lat)
                tokens[0] += n

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    latencies.sort()
    return {
        "ready_s": s.ready_s,
        "single_latency_s": statistics.median(x for x, _ in single),
        "single_completion_tokens": single[0][1],
        "single_tokens_per_s": single[0][1] / statistics.median(x for x, _ in single),
        "concurrent_wall_s": wall,
        "requests_per_s": requests / wall,
        "completion_tokens_per_s": tokens[0] / wall,
        "completion_tokens": tokens[0],
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    }


def best(runs: list[dict]) -> dict:
    """Per figure, the best rep (the machine is shared: slower reps measure the neighbours)."""
    low = ("single_latency_s", "concurrent_wall_s", "latency_p50_s", "latency_p99_s", "ready_s")
    out = {k: (min if k in low else max)(r[k] for r in runs) for k in runs[0]}
    return {**out, "reps": len(runs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--side", choices=["both", "tkc", "peer"], default="both")
    a = ap.parse_args(argv)
    model = build_tiny()
    d = workdir("serve", "runs")
    bundle = tkc_bundle(model)
    sides = [s for s in ("tkc", "peer") if a.side in ("both", s)]
    if "peer" in sides:
        ensure_peer()
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for rep in range(a.reps):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            server = start_tkc(bundle, d) if side == "tkc" else start_peer(model, d)
            try:
                runs[side].append(measure(server, a.requests, a.clients))
            finally:
                server.stop()
            print(side, rep, runs[side][-1], flush=True)
    result = {s: best(r) for s, r in runs.items()}
    t, p = result.get("tkc", {}), result.get("peer", {})
    payload = {
        "config": {"new_tokens": NEW_TOKENS, "requests": a.requests, "clients": a.clients, "threads": THREADS,
                   "reps": a.reps, "model": "the bench's tiny Qwen2, hidden 256, 4 layers, float32, greedy",
                   "peer_max_concurrent": os.environ.get("MAX_CONCURRENT") or "1 (its default)"},
        "tkc": t, "peer": p or {"status": "not measured"}, "runs": runs,
        "ratios": {"single_latency_speedup": ratio(p.get("single_latency_s"), t.get("single_latency_s")),
                   "throughput_ratio": ratio(t.get("requests_per_s"), p.get("requests_per_s")),
                   "tokens_per_s_ratio": ratio(t.get("completion_tokens_per_s"), p.get("completion_tokens_per_s"))},
        "versions": {"tkc": tkc_versions(), "peer": peer_versions() if p else {}},
    }
    save("serve", payload)
    return payload


if __name__ == "__main__":
    main()
    sys.exit(0)
