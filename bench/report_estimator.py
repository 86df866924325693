"""BENCHMARKS.md's "Memory estimate vs measured" section, from bench/results/estimator.json (bench/estimator.py)."""

from __future__ import annotations

DASH = "—"
GOAL = 0.15
MIB = 1 << 20


def _method(row: dict) -> str:
    text = {"full": "full", "lora": "LoRA r16", "qlora": "QLoRA 4-bit r16"}.get(row["method"], row["method"])
    return text + (", checkpointing" if row.get("checkpointing") else "")


def _launch(row: dict) -> str:
    kind = row.get("launch") or ("local" if row["ranks"] == 1 else "torchrun (DDP)")
    return kind + (f" ZeRO-{row['zero']}" if row.get("zero") is not None else "")


def _row(row: dict) -> str:
    head = (f"| {row['id']} | {row['params'] / 1e6:.1f}M | {_method(row)} | {row['ranks']} | {_launch(row)} | "
            f"{row['micro']} × {row['cutoff']} | {row['predicted_bytes'] / MIB:,.0f} | ")
    if "error" not in row:
        return head + f"{DASH} | {DASH} ({(row.get('status') or 'not run')[:80]}) |"
    mark = "" if abs(row["error"]) <= GOAL else " **(over 15%)**"
    return head + f"{row['measured_bytes'] / MIB:,.0f} | {100 * row['error']:+.1f}%{mark} |"


def section_estimator(e: dict) -> list[str]:
    lines = ["## Memory estimate vs measured", ""]
    if not e:
        return lines + ["Not measured yet (`.venv/bin/python bench/estimator.py`).", ""]
    rows = e.get("rows") or []
    done = [r for r in rows if "error" in r]
    within = sum(abs(r["error"]) <= GOAL for r in done)
    lines += [
        "The compile-time estimate (`tkc.compiler.estimate`, in each training stage's `estimate` in resolved.json) "
        "against the peak measured on CPU: Llama-style models built locally (32k vocabulary, untied embeddings), "
        f"one pt stage of {e.get('steps', DASH)} steps on rows exactly `cutoff_len` tokens long, fp32, compiled "
        "for the CPU and run by `tkc run` (1 rank) or the bundle's `launch/00-pt.sh` (2 ranks, torchrun over gloo). "
        "Measured: the C heap in use (glibc `mallinfo2`, every torch CPU tensor) sampled every 0.5 ms in each "
        "process by bench/memprobe, its peak minus the heap in use just before the model is built; the largest "
        "rank. Predicted: the estimate's total minus its fixed `overhead` (the process with its libraries, which "
        "that baseline takes out). The estimate's 64 MiB runtime workspace term was calibrated on these runs, so "
        "the errors test how the estimate scales with the model, the method and the ranks.",
        "",
        f"{within} of {len(done)} configurations within {GOAL:.0%} (error = (predicted − measured) ÷ measured).",
        "",
        "| config | params | method | ranks | launch | micro × cutoff | predicted MiB | measured MiB | error |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in rows),
        "",
        "ZeRO-2/3 and FSDP rows come from `bench/estimator.py --sharded` (DeepSpeed with `DS_ACCELERATOR=cpu`, "
        "FSDP2 over gloo). Full fine-tuning peaks in the optimizer step (weights, gradients, both moments and "
        "AdamW's temporaries), so gradient checkpointing does not move its peak; LoRA peaks in backward, where "
        "checkpointing does. Not measured on a GPU.",
        "",
    ]
    return lines
