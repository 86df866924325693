"""Benchmark 5: this machine's fp32 matmul throughput, the denominator of model FLOPs utilisation (MFU).

    .venv/bin/python bench/matmul.py [--threads N] [--reps N]

torch.mm of two n x n fp32 matrices, n = 256 ... 2048, at the intra-op thread count both tools train with (tkc's
cpu profile: 2; the peer's default is the same), in a fresh process of tkc's venv (torch 2.13.0+cpu, as the
peer's). Each size: the median of `reps` timed products after two warm-up ones; the peak is the best size's
median. Also records the bench model's shape (read from its config.json), from which bench/report.py computes
each training workload's model FLOPs per token. Results: bench/results/matmul.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TKC_PY, save  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402

SIZES = (256, 512, 1024, 2048)

PROBE = """
import json, statistics, sys, time
import torch
threads, reps, sizes = int(sys.argv[1]), int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
torch.set_num_threads(threads)
out = {}
for n in sizes:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    out[n] = 2 * n**3 / statistics.median(times) / 1e9
print(json.dumps({"threads": torch.get_num_threads(), "gflops": out, "torch": torch.__version__}))
"""


def model_shape(model_dir: Path) -> dict:
    c = json.loads((model_dir / "config.json").read_text())
    return {k: c[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                              "intermediate_size", "vocab_size")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=25)
    a = ap.parse_args(argv)
    r = subprocess.run([str(TKC_PY), "-c", PROBE, str(a.threads), str(a.reps), ",".join(map(str, SIZES))],
                       capture_output=True, text=True, check=True)
    got = json.loads(r.stdout)
    gflops = {int(n): g for n, g in got["gflops"].items()}
    best = max(gflops, key=gflops.__getitem__)
    res = {"command": "bench/matmul.py", "threads": got["threads"], "torch": got["torch"], "reps": a.reps,
           "gflops_by_size": gflops, "peak_gflops": gflops[best], "peak_size": best,
           "model": model_shape(build_assets())}
    save("matmul", res)
    print(f"fp32 matmul at {got['threads']} threads: " + ", ".join(f"{n}: {g:.0f}" for n, g in gflops.items())
          + f" GFLOPS; peak {gflops[best]:.0f}")
    return res


if __name__ == "__main__":
    main()
