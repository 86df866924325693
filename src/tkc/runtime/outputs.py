"""What a stage leaves in outputs/<stage>/: metrics.json, loss.png, run_record.json, model/, manifest.json, DONE."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tkc.bundle.plan import ResolvedStage
from tkc.runtime.context import BundleChanged, RunContext

PACKAGES = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers", "safetensors", "tkc"]


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def hardware() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def plot_loss(path: Path, records: list[dict], title: str) -> None:
    """loss.png: training loss per step (and eval loss points when present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def run_record(ctx: RunContext, stage: ResolvedStage, *, wall_s: float, tokens_seen: int, steps: int,
               resumed_from: int | None) -> dict[str, Any]:
    return {"stage": stage.name, "kind": stage.kind, "bundle_hash": ctx.bundle_hash, "versions": versions(),
            "hardware": hardware(), "world_size": ctx.dist.world_size, "wall_time_s": round(wall_s, 3),
            "tokens_seen": tokens_seen, "steps": steps, "resumed_from_step": resumed_from,
            "env_drift": list(ctx.env_drift),  # what `tkc run --allow-env-drift` let through ([]: none)
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def done_marker(ctx: RunContext, stage: ResolvedStage) -> Path:
    return ctx.stage_dir(stage) / "DONE"


def is_done(ctx: RunContext, stage: ResolvedStage) -> bool:
    """True when the stage finished for this bundle; a DONE from another bundle hash is refused."""
    marker = done_marker(ctx, stage)
    if not marker.exists():
        return False
    owner = marker.read_text(encoding="utf-8").strip()
    if owner and owner != ctx.bundle_hash:
        raise BundleChanged(f"outputs/{stage.name} was produced by bundle {owner[:12]}, not this bundle "
                            f"{ctx.bundle_hash[:12]}; delete {ctx.stage_dir(stage)} to run the stage again")
    return True


def mark_done(ctx: RunContext, stage: ResolvedStage) -> None:
    """The outputs manifest (sha256 of every file the stage left, checked before a later stage reads them),
    then DONE; every rank waits until both exist, so no rank reads a stage's outputs before they are sealed."""
    from tkc.runtime.distributed import barrier
    from tkc.runtime.stage_manifest import seal

    seal(ctx, stage)
    if ctx.dist.is_main:
        done_marker(ctx, stage).write_text(ctx.bundle_hash + "\n", encoding="utf-8")
    barrier(ctx.dist)
