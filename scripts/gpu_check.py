"""`make gpu-check`: short evidence that tkc trains on one CUDA GPU; tokens/s, MFU, peak memory, estimate error.

    python3 scripts/gpu_check.py [--out DIR]                    # a single-GPU CUDA machine (about 5 minutes)
    .venv/bin/python scripts/gpu_check.py --device cpu --tiny   # the same code paths on CPU (tests/test_gpu_check.py)

Runs, each compiled by `tkc compile` from a recipe this script writes and started by the bundle's own launch
script (launch/*.sh, so torchrun and DeepSpeed start as on a cluster):
  sft_lora      bf16 LoRA SFT (one process)
  sft_full      bf16 full SFT (one process), then sft_full_repeat: the same bundle again, losses compared bit for bit
  zero2, zero3  bf16 full SFT, 1-GPU DeepSpeed ZeRO-2 and ZeRO-3 (torchrun, launch.kind deepspeed)
The model (~100M parameters, Llama architecture, seeded random weights), its byte-level BPE tokenizer (the
`tokenizers` library, tkc.runtime.tiny) and the SFT data are built locally: nothing is downloaded. --tiny: a
few-hundred-thousand-parameter model and 2 steps (the CPU test).

Figures, per run: tokens/s (run_record.json: tokens_seen / wall_time_s, the training loop's own time); MFU =
model FLOPs per second / the GPU's dense bf16 peak, with model FLOPs per token 6N + 12*L*d*S (full: PaLM's
count, N the non-embedding parameters, S the sequence length) or 4N + 12*L*d*S (LoRA: frozen weights get no
weight gradients); the peak is the datasheet figure for the GPU's name (PEAKS below) and also a measured one
(the best of a few 8192^3 bf16 matmuls), both printed and both named in the JSON; peak memory:
torch.cuda.max_memory_allocated of each training process (recorded at its exit by a sitecustomize hook this
script puts on PYTHONPATH; on CPU the process's peak RSS); the compile-time estimate's error: each stage's
`estimate` in resolved.json against the measured figures, or "no estimate": memory as its total less its
`overhead` (CUDA context, allocator slack) against max_memory_allocated (on CPU: its total against peak RSS),
and step time against the loop's wall time per step.

Environment: the machine's own torch, transformers, peft and accelerate; what they lack travels as wheels
(scripts/gpu_wheels.sh; README in the script). tkc's environment check refuses versions other than its
lockfile's, so every run is `tkc run --allow-env-drift`; the drift allowed is printed and written to the JSON.
Results: gpu_check.json in --out (default: $OUT when set, else run/gpu-check/); scratch in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # a bare machine: tkc from this checkout, not installed
    sys.path.insert(0, str(SRC))

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, matched on the device name.
PEAKS = [
    ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 364.2), ("A6000", 154.8), ("4090", 165.2), ("3090", 71.0),
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MEM_HOOK = '''"""gpu_check: record this process's peak memory at exit (file per process in TKC_GPU_CHECK_MEM)."""
import atexit, json, os, resource, sys

def _tkc_gpu_check_record():
    out = {"pid": os.getpid(), "rank": int(os.environ.get("RANK", "0")), "ranked": "RANK" in os.environ,
           "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "argv": sys.argv[1:4]}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        out["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    out["modules"] = sorted({m.split(".")[0] for m in list(sys.modules) if not m.startswith("_")})
    d = os.environ["TKC_GPU_CHECK_MEM"]
    with open(os.path.join(d, f"mem-{os.getpid()}.json"), "w") as fh:
        json.dump(out, fh)

if os.environ.get("TKC_GPU_CHECK_MEM"):
    atexit.register(_tkc_gpu_check_record)
'''


# -- shapes and runs -------------------------------------------------------------------------------------------
def shape(tiny: bool) -> dict:
    """The Llama config's size: ~100M parameters (12 x 8.3M in the layers), or a tiny one for the CPU test."""
    if tiny:
        return {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 4}
    return {"hidden_size": 768, "intermediate_size": 2560, "num_hidden_layers": 12, "num_attention_heads": 12,
            "num_key_value_heads": 12}


def train_opts(tiny: bool, steps: int | None) -> dict:
    if tiny:
        return {"max_steps": steps or 2, "global_batch_size": 2, "micro_batch_size": 2, "cutoff": 64}
    return {"max_steps": steps or 100, "global_batch_size": 16, "micro_batch_size": 16, "cutoff": 1024}


RUNS = {  # name: (finetuning method, launch kind, ZeRO stage)
    "sft_lora": ("lora", "local", None),
    "sft_full": ("full", "local", None),
    "zero2": ("full", "deepspeed", 2),
    "zero3": ("full", "deepspeed", 3),
}


# -- assets ------------------------------------------------------------------------------------------------------
def build_assets(folder: Path, tiny: bool, cutoff: int) -> Path:
    """config.json (Llama), tokenizer (byte-level BPE, ChatML specials), seeded weights and sft.jsonl."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tkc.runtime.tiny import SPECIAL_TOKENS, build_tokenizer, tokenizer_config

    model = folder / "model"
    if (model / "model.safetensors").exists():
        return model
    model.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(1024)
    (model / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    (model / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config(), "model_max_length": cutoff}))
    vocab = tok.get_vocab_size()
    eos = vocab - len(SPECIAL_TOKENS)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=max(cutoff, 512), rms_norm_eps=1e-5,
                      bos_token_id=eos, eos_token_id=eos + 2, pad_token_id=eos, tie_word_embeddings=False,
                      **shape(tiny))
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(model, safe_serialization=True)
    write_data(folder / "sft.jsonl", records=64 if tiny else 2048, words=24 if tiny else 900)
    return model


def write_data(path: Path, records: int, words: int) -> None:
    """Alpaca records of fixed, varied text (arithmetic prompts, word-list answers): deterministic, no network."""
    from tkc.runtime.tiny import _WORDS

    lines = []
    for i in range(records):
        answer = " ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(words))
        lines.append(json.dumps({"instruction": f"What is {i}+{i * 3 % 97}? Then write a list.", "input": "",
                                 "output": f"{i + i * 3 % 97}. {answer}."}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def recipe(name: str, device: str, tiny: bool, steps: int | None, profile: str | dict) -> dict:
    method, kind, zero = RUNS[name.removesuffix("_repeat")]
    t = train_opts(tiny, steps)
    finetuning: dict = {"method": method}
    if method == "lora":
        finetuning["lora"] = {"rank": 16, "alpha": 32, "dropout": 0.0, "targets": LORA_TARGETS}
    launch: dict = {"kind": kind, "master_port": 29500 + (os.getpid() % 2000)}
    if zero is not None:
        launch["zero_stage"] = zero
    if device == "cpu":
        launch["cpu_threads"] = 1
    return {
        "schema_version": 1, "name": "gpu-check-" + name.removesuffix("_repeat").replace("_", "-"),
        "model": {"path": "../assets/model"}, "read_roots": ["../assets"], "template": "qwen2_5",
        "data": {"datasets": {"synth": {"path": "../assets/sft.jsonl", "format": "alpaca"}},
                 "cutoff_len": t["cutoff"]},
        "stages": [{"kind": "sft", "name": "sft", "datasets": ["synth"]}],
        "finetuning": finetuning,
        "train": {"learning_rate": 1e-4 if method == "lora" else 2e-5, "lr_scheduler": "cosine",
                  "warmup_ratio": 0.0, "max_steps": t["max_steps"], "global_batch_size": t["global_batch_size"],
                  "micro_batch_size": t["micro_batch_size"], "seed": 42,
                  "precision": "fp32" if device == "cpu" else "bf16", "gradient_checkpointing": False,
                  "save_steps": 100_000, "logging_steps": 1, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "hardware": profile, "launch": launch,
    }


# -- environment -------------------------------------------------------------------------------------------------
def child_env(work: Path, device: str) -> dict[str, str]:
    """PATH with a `tkc` shim (the launch scripts exec `tkc` or `torchrun -m tkc.cli.main`), tkc's source and
    the memory hook on PYTHONPATH, one thread per process on CPU."""
    shim = work / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "tkc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tkc.cli.main "$@"\n')
    (shim / "tkc").chmod(0o755)
    hook = work / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(MEM_HOOK)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["PATH"] = os.pathsep.join([str(shim), str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(hook), str(SRC), env.get("PYTHONPATH", "")] if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               TKC_DIST_TIMEOUT_S="300")
    if device == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def pick_hardware(device: str) -> tuple[str | dict, str]:
    """(the recipe's hardware, the GPU's name): the catalog's 1-GPU profile when the GPU is one it describes
    (its peak gives the compile-time step estimate), else an inline description of this GPU (no time estimate)."""
    if device == "cpu":
        return "cpu", "cpu"
    import torch

    name = torch.cuda.get_device_name(0)
    if "H100" in name or "H200" in name:
        return "h100_80g_x1", name
    if "4090" in name:
        return "rtx4090", name
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return {"accelerator": "cuda", "devices_per_node": 1, "memory_gb": round(gib, 1), "supports_bf16": True,
            "supports_fp16": True}, name


def peaks(device: str, name: str) -> dict:
    """The GPU's dense bf16 peak: the datasheet table's (by name) and a measured best 8192^3 bf16 matmul."""
    if device == "cpu":
        return {"table_tflops": None, "measured_tflops": None, "basis": "cpu: no bf16 peak"}
    import torch

    table = next((tf for key, tf in PEAKS if key in name), None)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    measured = 2 * 8192**3 / best / 1e12
    return {"table_tflops": table, "measured_tflops": round(measured, 1),
            "basis": f"table: datasheet dense bf16 for {name!r}" if table else f"no table entry for {name!r}"}


# -- one run -----------------------------------------------------------------------------------------------------
def sh(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float) -> int:
    with log.open("w") as fh:
        try:
            return subprocess.run(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  stdin=subprocess.DEVNULL).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\ngpu_check: timed out after {timeout:.0f} s\n")
            return 124


def compile_run(name: str, a: argparse.Namespace, work: Path, env: dict, hardware: str | dict) -> Path | dict:
    """Write the recipe, `tkc compile` it; the bundle's folder, or a failure record."""
    import yaml

    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe(name, a.device, a.tiny, a.steps, hardware), sort_keys=False))
    code = sh([sys.executable, "-m", "tkc.cli.main", "compile", "recipe.yaml", "-o", "run"], env, d,
              d / "compile.log", 300)
    if code != 0:
        return {"ok": False, "stage": "compile", "exit": code, "log": tail(d / "compile.log")}
    return d / "run"


def launch(name: str, bundle: Path, env: dict, timeout: float) -> dict:
    """Run the bundle's one training stage through its own launch script; the measured figures."""
    script = sorted((bundle / "launch").glob("[0-9][0-9]-*.sh"))[0]
    mem = bundle.parent / f"mem-{name}"
    shutil.rmtree(mem, ignore_errors=True)
    mem.mkdir()
    log = bundle.parent / f"{name}.log"
    t0 = time.monotonic()
    code = sh(["bash", str(script), "--allow-env-drift"], {**env, "TKC_GPU_CHECK_MEM": str(mem)}, bundle, log,
              timeout)
    out: dict = {"ok": code == 0, "exit": code, "launch_to_exit_s": round(time.monotonic() - t0, 2),
                 "launcher": script.name}
    if code != 0:
        return {**out, "log": tail(log)}
    sdir = bundle / "outputs" / "sft"
    rec = json.loads((sdir / "run_record.json").read_text())
    steps = [json.loads(s) for s in (sdir / "steps.jsonl").read_text().splitlines() if s.strip()]
    procs = [json.loads(p.read_text()) for p in sorted(mem.glob("mem-*.json"))]
    trainers = [p for p in procs if p["ranked"]] or [p for p in procs if "torch" in p["modules"]]  # not torchrun
    out.update(tokens=rec["tokens_seen"], steps=rec["steps"], wall_s=rec["wall_time_s"],
               tokens_per_s=rec["tokens_seen"] / rec["wall_time_s"] if rec["wall_time_s"] else None,
               losses=[s["loss"] for s in steps if "loss" in s], env_drift=rec.get("env_drift", []),
               world_size=rec.get("world_size"),
               peak_memory_allocated=max((p.get("max_memory_allocated", 0) for p in trainers), default=None),
               peak_rss=max((p["max_rss_bytes"] for p in trainers), default=None),
               modules=sorted({m for p in procs for m in p["modules"]}))
    return out


def tail(path: Path, n: int = 25) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []


# -- figures -----------------------------------------------------------------------------------------------------
def model_flops_per_token(cfg: dict, method: str, seq: float) -> float:
    """6N + 12*L*d*S (full; N without the embeddings) or 4N + 12*L*d*S (LoRA: no weight gradients)."""
    d, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    n = layers * (2 * d * d + 2 * d * kv + 3 * d * inter) + d * cfg["vocab_size"]  # the LM head is a matmul too
    return (4 if method == "lora" else 6) * n + 12 * layers * d * seq


def estimate_of(bundle: Path) -> dict | None:
    """The training stage's compile-time `estimate` in resolved.json, if the compiler wrote one."""
    resolved = json.loads((bundle / "resolved.json").read_text())
    stage = next((s for s in resolved.get("stages", []) if s.get("name") == "sft"), {})
    return stage.get("estimate")


def estimate_error(est: dict | None, run: dict, device: str) -> dict:
    """Predicted against measured: per-device memory and step time, as (predicted - measured) / measured."""
    if not est or not est.get("memory"):
        return {"status": "no estimate" if not est else f"no estimate: {est.get('missing')}"}
    mem = est["memory"]
    if device == "cuda":  # tensors only on both sides: the estimate without its CUDA-context/allocator overhead
        measured_mem, predicted_mem = run.get("peak_memory_allocated"), mem["total_bytes"] - mem["overhead_bytes"]
        basis = "torch.cuda.max_memory_allocated against the estimate's total less its overhead"
    else:  # the whole process on both sides (the interpreter and libraries are the estimate's overhead)
        measured_mem, predicted_mem = run.get("peak_rss"), mem["total_bytes"]
        basis = "peak RSS against the estimate's total"
    out: dict = {"memory_predicted_bytes": predicted_mem, "memory_measured_bytes": measured_mem,
                 "memory_measured_as": basis,
                 "memory_error": rel(predicted_mem, measured_mem)}
    t = est.get("time") or {}
    step_s = run["wall_s"] / run["steps"] if run.get("steps") else None
    out.update(step_s_predicted=t.get("step_seconds"), step_s_measured=step_s,
               step_time_error=rel(t.get("step_seconds"), step_s),
               time_status=None if t else (est.get("missing") or "no time estimate"))
    return out


def rel(pred, meas) -> float | None:
    return round((pred - meas) / meas, 4) if pred is not None and meas else None


def figures(name: str, run: dict, cfg: dict, pk: dict, a: argparse.Namespace, bundle: Path) -> dict:
    method = RUNS[name.removesuffix("_repeat")][0]
    t = train_opts(a.tiny, a.steps)
    seq = run["tokens"] / (run["steps"] * t["global_batch_size"]) if run.get("steps") else t["cutoff"]
    fpt = model_flops_per_token(cfg, method, seq)
    achieved = fpt * run["tokens_per_s"] / 1e12 if run.get("tokens_per_s") else None
    run.update(model_flops_per_token=fpt, model_tflops=round(achieved, 2) if achieved else None,
               mfu_vs_table=rel_frac(achieved, pk.get("table_tflops")),
               mfu_vs_measured=rel_frac(achieved, pk.get("measured_tflops")),
               estimate=estimate_error(estimate_of(bundle), run, a.device))
    return run


def rel_frac(x, peak) -> float | None:
    return round(x / peak, 4) if x and peak else None


# -- main --------------------------------------------------------------------------------------------------------
def preflight(device: str) -> list[str]:
    """What this machine lacks for tkc's compile and run paths; nothing is installed. The light packages are
    imported (a wheel for the wrong Python fails there), the heavy ones only looked up."""
    import importlib
    import importlib.util

    missing = []
    for mod in ("pydantic", "pydantic_core", "cattrs", "attrs", "typer", "rich", "yaml", "jinja2", "packaging"):
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any failure to import is a missing piece, named
            missing.append(f"{mod} ({type(e).__name__}: {e})")
    heavy = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "deepspeed", "hjson")
    missing += [mod for mod in heavy if importlib.util.find_spec(mod) is None]
    if device == "cuda" and not missing:
        import torch

        if not torch.cuda.is_available():
            missing.append("a CUDA device (torch.cuda.is_available() is False)")
    return missing


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("torch", "transformers", "peft", "accelerate", "deepspeed", "tokenizers", "pydantic", "tkc"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import torch

    out["cuda"] = torch.version.cuda
    out["python"] = sys.version.split()[0]
    return out


def run_all(a: argparse.Namespace, work: Path, env: dict, hardware: str | dict) -> dict:
    """Every run in order; sft_full twice (two bundles of one recipe) for the deterministic repeat."""
    have_ds = (SRC / "tkc" / "runtime" / "strategy" / "deepspeed.py").exists()
    results: dict = {}
    for name in [n for n in a.runs.split(",") if n]:
        if RUNS[name.removesuffix("_repeat")][1] == "deepspeed" and not have_ds:
            results[name] = {"ok": None, "status": "not run: tkc.runtime.strategy.deepspeed is not in this "
                                                   "checkout (DeepSpeed training not implemented yet)"}
            print(f"gpu_check: {name}: {results[name]['status']}", flush=True)
            continue
        bundle = compile_run(name, a, work, env, hardware)
        if isinstance(bundle, dict):
            results[name] = bundle
        else:
            results[name] = launch(name, bundle, env, a.timeout)
            if results[name]["ok"]:
                figures(name, results[name], a.model_cfg, a.peaks, a, bundle)
        r = results[name]
        print(f"gpu_check: {name}: " + ("ok" if r.get("ok") else f"FAILED (exit {r.get('exit')})") +
              (f", {r['tokens_per_s']:.0f} tokens/s" if r.get("tokens_per_s") else ""), flush=True)
        for line in [] if r.get("ok") else r.get("log", []):
            print("    " + line)
    return results


def repeat_check(results: dict) -> dict:
    a, b = results.get("sft_full", {}), results.get("sft_full_repeat", {})
    if not (a.get("ok") and b.get("ok")):
        return {"deterministic": None, "status": "not compared: a run failed or was not run"}
    return {"deterministic": a["losses"] == b["losses"], "steps": len(a["losses"]),
            "max_abs_diff": max((abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=False)), default=0.0)}


def gib(x) -> str:
    return "—" if not x else f"{x / 2**30:.2f}"


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def print_table(report: dict) -> None:
    print(f"\ngpu_check on {report['device_name']} ({report['device']}); peak bf16: table "
          f"{report['peak']['table_tflops']} TFLOP/s, measured {report['peak']['measured_tflops']} TFLOP/s")
    print(f"{'run':<16}{'tokens/s':>10}{'MFU(tbl)':>10}{'MFU(meas)':>10}{'peak GiB':>10}{'mem est err':>12}"
          f"{'step est err':>13}")
    for name, r in report["runs"].items():
        if not r.get("ok"):
            print(f"{name:<16}{r.get('status') or 'FAILED (exit ' + str(r.get('exit')) + ')'}")
            continue
        e = r["estimate"]
        mem = r["peak_memory_allocated"] if report["device"] == "cuda" else r["peak_rss"]
        print(f"{name:<16}{r['tokens_per_s']:>10.0f}{pct(r['mfu_vs_table']):>10}{pct(r['mfu_vs_measured']):>10}"
              f"{gib(mem):>10}{pct(e.get('memory_error')) if 'status' not in e else e['status']:>12}"
              f"{pct(e.get('step_time_error')):>13}")
    print(f"deterministic repeat: {report['repeat']}")
    print(f"environment drift allowed (tkc run --allow-env-drift): {report['env_drift'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and a few steps (the CPU test)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 100; --tiny 2)")
    ap.add_argument("--runs", default="sft_lora,sft_full,sft_full_repeat,zero2,zero3")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "run" / "gpu-check"),
                    help="where gpu_check.json goes (default: $OUT when set, else run/gpu-check)")
    ap.add_argument("--work", type=Path, default=ROOT / "run" / "gpu-check" / "work",
                    help="scratch: model, data, bundles, logs (default run/gpu-check/work, ignored by git)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run before it is stopped")
    a = ap.parse_args(argv)
    missing = preflight(a.device)
    if missing:
        print("gpu_check: this machine lacks: " + "; ".join(missing) +
              "\n  (wheels: bash scripts/gpu_wheels.sh here, then see that script's header for the device command)")
        return 2
    t0 = time.monotonic()
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    env = child_env(work, a.device)
    hardware, device_name = pick_hardware(a.device)
    model = build_assets(work / "assets", a.tiny, train_opts(a.tiny, a.steps)["cutoff"])
    a.model_cfg = json.loads((model / "config.json").read_text())
    a.peaks = peaks(a.device, device_name)
    runs = run_all(a, work, env, hardware)
    report = {"device": a.device, "device_name": device_name, "hardware": hardware, "peak": a.peaks,
              "model": {k: a.model_cfg[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                    "vocab_size")},
              "params": params(model), "train": train_opts(a.tiny, a.steps), "versions": versions(),
              "env_drift": sorted({d for r in runs.values() for d in r.get("env_drift", [])}),
              "runs": {n: {k: v for k, v in r.items() if k != "modules"} for n, r in runs.items()},
              "modules_imported": sorted({m for r in runs.values() for m in r.get("modules", [])}),
              "repeat": repeat_check(runs), "wall_s": round(time.monotonic() - t0, 1),
              "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print_table(report)
    print(f"gpu_check: {report['wall_s']} s; results in {a.out / 'gpu_check.json'}")
    failed = [n for n, r in runs.items() if r.get("ok") is False]
    return 1 if failed or report["repeat"]["deterministic"] is False else 0


def params(model: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


if __name__ == "__main__":
    sys.exit(main())
