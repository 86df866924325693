"""Run every benchmark against the peer, then regenerate BENCHMARKS.md from bench/results/*.json.

    .venv/bin/python bench/run_all.py [--quick] [--side both|tkc|peer]      # `make bench`

Full: about 27 minutes on this 2-core machine (2026-12-05; the training part, three workloads x 3
repetitions per tool plus the peer-defaults row, 8.7 of them; preprocessing 5 cold + cached pairs per tool, 1.5;
the peer's padded sizes 1.7; determinism (repeats, 2 ranks, kill -9 resume; SFT+LoRA and DPO+LoRA) 10.2; matmul
about 5 s), plus the scaling table's 24 minutes (4 strategies x 2 layouts x 2 repetitions of 8 steps and the peer's
ZeRO-3, at a load average of 11). The peer also runs at tkc's thread count when its default
differs (not here: both use 2). --quick: about 6 minutes (fewer repetitions, SFT+LoRA only, no determinism or
scaling run: their previous results stay). Set TKC_BENCH_RESULTS=DIR to write results and the report there instead
(trial runs).
Benchmarks are not tests: nothing here runs in `make test`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import determinism  # noqa: E402
import errors  # noqa: E402
import matmul  # noqa: E402
import padding  # noqa: E402
import parity  # noqa: E402
import preprocess  # noqa: E402
import report  # noqa: E402
import scaling  # noqa: E402
import train  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS  # noqa: E402


def tkc_cpu_threads() -> int:
    """The intra-op threads tkc's cpu profile gives a one-process run (what the bench's bundles resolve to)."""
    from tkc.catalog.registry import profiles

    return profiles()["cpu"].cpu_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["both", "tkc", "peer"], default="both")
    a = ap.parse_args()
    flags = (["--quick"] if a.quick else []) + ["--side", a.side]
    t0 = time.monotonic()
    if a.side != "tkc":
        ensure_peer()
    build_assets()
    for name, step in (
        ("errors", lambda: errors.main(flags)),
        ("preprocess", lambda: preprocess.main(flags)),
        (
            "preprocess_synthetic",
            lambda: preprocess.main([*flags, "--synthetic", "50000", "--reps", "1" if a.quick else "2"]),
        ),
        ("parity", parity.main),
        ("matmul", lambda: matmul.main(["--threads", str(tkc_cpu_threads())])),
        ("train", lambda: train.main([*flags, "--peer-threads", str(tkc_cpu_threads())])),
        ("padding", lambda: padding.main([*flags, "--workloads", "sft_lora" if a.quick else ",".join(WORKLOADS)])),
        ("determinism", lambda: None if a.quick else determinism.main(flags)),
        ("scaling", lambda: None if a.quick else scaling.main([] if a.side != "tkc" else ["--no-peer"])),
    ):
        t = time.monotonic()
        print(f"== {name}", flush=True)
        step()
        print(f"== {name}: {time.monotonic() - t:.0f} s", flush=True)
    report.main([])
    print(f"run_all: {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
