"""Pass 7: each training stage's precision, explicit: `auto` becomes what the hardware computes in."""

from __future__ import annotations

from typing import Any

from tkc.compiler.plan import Plan


def best_precision(accelerator: str, bf16: bool, fp16: bool) -> str:
    if accelerator == "cpu":
        return "fp32"  # CPU autocast to bf16 is slow and changes numerics; fp32 is the reproducible choice
    return "bf16" if bf16 else ("fp16" if fp16 else "fp32")


def derive_precision(plan: Plan) -> Plan:
    best = best_precision(plan.get("hardware.accelerator", "cpu"), bool(plan.get("hardware.supports_bf16")),
                          bool(plan.get("hardware.supports_fp16")))
    out: dict[str, tuple[Any, str]] = {}
    for i in range(plan.stage_count()):
        key = f"stages.{i}.train.precision"
        if plan.get(key) == "auto":
            out[key] = (best, "derived:derive_precision")
    return plan.with_values(out)
