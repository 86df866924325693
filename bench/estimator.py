"""The compile-time memory estimate against measured peak memory, on CPU.

    .venv/bin/python bench/estimator.py [--only ID ...] [--sharded] [--configs more.json]

For each configuration (CONFIGS below, data: a model shape, a method, ranks, launcher; `--configs` adds rows from a
JSON list of the same dicts, `--sharded` the ZeRO-2/3 and FSDP rows): build a Llama-style model locally (seeded
weights, safetensors), compile a one-stage pt bundle for the CPU (every row is cutoff_len tokens long, all of them
labels: the case the estimate counts), train 3 steps through `tkc run` (1 rank) or the bundle's own launch script
(2 ranks), and compare.

What is measured: the C heap in use (glibc mallinfo2: every torch CPU tensor; no file mappings, no freed pages the
allocator keeps) sampled every 0.5 ms by bench/memprobe/sitecustomize.py in every process; per rank, its peak minus
the heap in use just before the model is built (imports, tokenizer and dataset are loaded by then); the table shows
the largest rank. What it is compared with: the estimate's total minus its `overhead` (the process with its
libraries loaded, which the baseline takes out): weights + gradients + optimizer + activations + buffers.
Writes bench/results/estimator.json (bench/report.py renders it into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work" / "estimator"
RESULTS = Path(os.environ.get("TKC_BENCH_RESULTS", BENCH / "results"))
TKC = ROOT / ".venv" / "bin" / "tkc"
PY = ROOT / ".venv" / "bin" / "python"
STEPS = 3

SHAPES = {   # Llama-style (untied embeddings, grouped KV heads); parameters in the name
    "llama_8m": {"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 344, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 32000},
    "llama_25m": {"hidden_size": 256, "num_hidden_layers": 6, "intermediate_size": 688, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 32000},
    "llama_100m": {"hidden_size": 768, "num_hidden_layers": 8, "intermediate_size": 2048, "num_attention_heads": 12,
                   "num_key_value_heads": 4, "vocab_size": 32000},
}
CONFIGS: list[dict] = [
    {"id": "8m-full-1r", "shape": "llama_8m", "method": "full", "ranks": 1, "micro": 2, "cutoff": 128},
    {"id": "25m-full-1r", "shape": "llama_25m", "method": "full", "ranks": 1, "micro": 4, "cutoff": 256},
    {"id": "25m-lora-1r", "shape": "llama_25m", "method": "lora", "ranks": 1, "micro": 4, "cutoff": 256},
    {"id": "25m-qlora-1r", "shape": "llama_25m", "method": "qlora", "ranks": 1, "micro": 4, "cutoff": 256},
    {"id": "25m-full-2r", "shape": "llama_25m", "method": "full", "ranks": 2, "micro": 4, "cutoff": 256},
    {"id": "100m-full-1r", "shape": "llama_100m", "method": "full", "ranks": 1, "micro": 2, "cutoff": 256},
    {"id": "100m-full-ckpt-1r", "shape": "llama_100m", "method": "full", "ranks": 1, "micro": 2, "cutoff": 256,
     "checkpointing": True},
    {"id": "100m-lora-1r", "shape": "llama_100m", "method": "lora", "ranks": 1, "micro": 2, "cutoff": 256},
    {"id": "100m-lora-ckpt-1r", "shape": "llama_100m", "method": "lora", "ranks": 1, "micro": 4, "cutoff": 256,
     "checkpointing": True},
    {"id": "100m-qlora-1r", "shape": "llama_100m", "method": "qlora", "ranks": 1, "micro": 2, "cutoff": 256},
    {"id": "100m-lora-2r", "shape": "llama_100m", "method": "lora", "ranks": 2, "micro": 2, "cutoff": 256},
]
SHARDED: list[dict] = [   # need the DeepSpeed/FSDP runtime (launch.kind deepspeed / fsdp)
    {"id": "25m-full-2r-zero2", "shape": "llama_25m", "method": "full", "ranks": 2, "micro": 4, "cutoff": 256,
     "launch": "deepspeed", "zero": 2},
    {"id": "25m-full-2r-zero3", "shape": "llama_25m", "method": "full", "ranks": 2, "micro": 4, "cutoff": 256,
     "launch": "deepspeed", "zero": 3},
    {"id": "25m-full-2r-fsdp", "shape": "llama_25m", "method": "full", "ranks": 2, "micro": 4, "cutoff": 256,
     "launch": "fsdp"},
]


def build_model(name: str) -> Path:
    """Config, tokenizer (tkc's tiny BPE builder) and seeded weights of a Llama-style model; built once."""
    out = WORK / "models" / name
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tkc.runtime.tiny import build_tiny_qwen2

    tmp = out.with_name(name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_qwen2(tmp)   # tokenizer files (its ids stay below the vocab_size set here)
    ids = json.loads((tmp / "config.json").read_text())
    config = LlamaConfig(**SHAPES[name], max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"],
                         pad_token_id=ids["pad_token_id"], rms_norm_eps=1e-6)
    torch.manual_seed(0)
    # stored in bf16: the CPU runtime loads fp32, so every tensor is converted into memory the probe sees (fp32
    # files would be mapped zero-copy, outside the C heap)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def write_data(folder: Path, rows: int, cutoff: int) -> Path:
    """Text rows several times longer than cutoff_len, so every row is cut to exactly cutoff_len tokens."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "sort", "digits", "model", "train", "memory", "estimate"]
    path = folder / "text.jsonl"
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(words) + str(rng.randint(0, 999))
                                                 for _ in range(cutoff * 2))}) + "\n")
    return path


def recipe_text(cfg: dict) -> str:
    method = "lora" if cfg["method"] in ("lora", "qlora") else "full"
    ft = [f"  method: {method}"]
    if method == "lora":
        ft.append("  lora: {rank: 16, targets: all}")
    if cfg["method"] == "qlora":
        ft.append("  quantization: {bits: 4, quant_type: nf4}")
    # QLoRA quantizes while loading, so it loads the saved weights; the others start from the same shape at random
    # (init: scratch): transformers' loader keeps ~30 MiB of its own on a CPU (the bf16 embedding tensors it read),
    # which is not the training's memory and would land in host RAM, not on the device, on a GPU
    init = "pretrained" if cfg["method"] == "qlora" else "scratch"
    ranks = cfg["ranks"]
    hardware = "hardware: cpu" if ranks == 1 else (
        f"hardware: {{accelerator: cpu, devices_per_node: {ranks}, nodes: 1, memory_gb: 24}}")
    launch = cfg.get("launch") or ("local" if ranks == 1 else "torchrun")
    zero = f", zero_stage: {cfg['zero']}" if cfg.get("zero") is not None else ""
    return "\n".join([
        f"name: est_{cfg['id'].replace('-', '_')}", f"model: {{path: ../../models/{cfg['shape']}, init: {init}}}", "read_roots: [../../models]", "template: auto",
        "data:", "  datasets:", "    text: {path: text.jsonl, format: text}", f"  cutoff_len: {cfg['cutoff']}",
        "stages:", "  - {kind: pt, name: pt, datasets: [text]}", "finetuning:", *ft, "train:",
        f"  global_batch_size: {cfg['micro'] * ranks}", f"  micro_batch_size: {cfg['micro']}",
        f"  max_steps: {STEPS}", "  save_steps: 100", "  learning_rate: 1.0e-4",
        f"  gradient_checkpointing: {str(bool(cfg.get('checkpointing'))).lower()}", hardware,
        f"launch: {{kind: {launch}, cpu_threads: 1{zero}}}", ""])


def run_config(cfg: dict) -> dict:
    folder = WORK / "runs" / cfg["id"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    build_model(cfg["shape"])
    write_data(folder, 32, cfg["cutoff"])
    (folder / "recipe.yaml").write_text(recipe_text(cfg))
    bundle, probes = folder / "bundle", folder / "probes"
    probes.mkdir()
    done = subprocess.run([str(TKC), "compile", str(folder / "recipe.yaml"), "-o", str(bundle)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cfg['id']}: compile failed:\n{done.stderr}")
    estimate = json.loads((bundle / "resolved.json").read_text())["stages"][0]["estimate"]
    env = {**os.environ, "PYTHONPATH": str(BENCH / "memprobe"), "TKC_MEMPROBE_DIR": str(probes),
           "OMP_NUM_THREADS": "1", "PATH": f"{PY.parent}:{os.environ.get('PATH', '')}", "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(29600 + random.randint(0, 300))}
    # --allow-env-drift: the figures are about memory, and the bench venv may differ from the CPU lockfile's pins
    cmd = [str(TKC), "run", str(bundle)] if cfg["ranks"] == 1 else ["bash", str(bundle / "launch" / "00-pt.sh")]
    cmd.append("--allow-env-drift")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    return summarize(cfg, estimate, probes, proc, time.perf_counter() - t0)


def summarize(cfg: dict, estimate: dict, probes: Path, proc: subprocess.CompletedProcess, wall: float) -> dict:
    memory = estimate["memory"]
    predicted = memory["total_bytes"] - memory["overhead_bytes"]
    ranks = [json.loads(p.read_text()) for p in sorted(probes.glob("*.json"))]
    ranks = [r for r in ranks if r["baseline_heap"] is not None]
    row = {**cfg, "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "params": estimate["params"], "trainable_params": estimate["trainable_params"],
           "predicted_bytes": predicted, "predicted": {k: v for k, v in memory.items() if k.endswith("_bytes")},
           "wall_s": round(wall, 1), "returncode": proc.returncode}
    if proc.returncode != 0 or len(ranks) != cfg["ranks"]:
        row["status"] = f"failed (exit {proc.returncode}, {len(ranks)} rank probes): {proc.stderr[-600:]}"
        return row
    measured = max(r["peak_after_baseline"] - r["baseline_heap"] for r in ranks)
    row |= {"measured_bytes": measured, "error": (predicted - measured) / measured,
            "per_rank_bytes": [r["peak_after_baseline"] - r["baseline_heap"] for r in ranks]}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="config ids to run (default: all)")
    ap.add_argument("--sharded", action="store_true", help="also the ZeRO-2/3 and FSDP rows")
    ap.add_argument("--configs", type=Path, help="a JSON list of more config dicts (same keys as CONFIGS)")
    args = ap.parse_args()
    configs = CONFIGS + (SHARDED if args.sharded else []) + (json.loads(args.configs.read_text()) if args.configs
                                                             else [])
    configs = [c for c in configs if not args.only or c["id"] in args.only]
    out = RESULTS / "estimator.json"
    old = {r["id"]: r for r in json.loads(out.read_text())["rows"]} if out.exists() else {}
    for cfg in configs:
        row = run_config(cfg)
        old[cfg["id"]] = row
        err = f"{100 * row['error']:+.1f}%" if "error" in row else row.get("status", "")[:200]
        print(f"{cfg['id']:>20}: predicted {row['predicted_bytes'] / 2**20:8.1f} MiB, measured "
              f"{row.get('measured_bytes', 0) / 2**20:8.1f} MiB, error {err} ({row['wall_s']} s)", flush=True)
    order = [c["id"] for c in CONFIGS + SHARDED]
    rows = sorted(old.values(), key=lambda r: (order.index(r["id"]) if r["id"] in order else 99, r["id"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(),
               "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    out.write_text(json.dumps({"generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": machine, "steps": STEPS, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
