"""Atomic checkpoints: write .tmp-ckpt-N, fsync, COMPLETE marker, rename to ckpt-N; keep the last save_total_limit."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tkc.bundle.io import fsync_path
from tkc.runtime.context import BundleChanged

_CKPT = re.compile(r"^ckpt-(\d+)$")


def save_checkpoint(root: Path, step: int, *, tensors: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint atomically; a crash at any point leaves the previous complete checkpoint usable."""
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f".tmp-ckpt-{step}", root / f"ckpt-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    publish(tmp, final, step)
    prune_checkpoints(root, keep)
    return final


def publish(tmp: Path, final: Path, step: int) -> None:
    """Make the fully written directory `tmp` the checkpoint `final`, atomically: every file and folder fsynced,
    a COMPLETE marker written and fsynced last, then one rename (and the parent fsynced). A crash before the
    rename leaves only `tmp`, which readers ignore; after it, `final` is whole on disk."""
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        fsync_path(f)
    (tmp / "COMPLETE").write_text(str(step) + "\n", encoding="utf-8")
    fsync_path(tmp / "COMPLETE")
    for d in [*sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True), tmp]:
        fsync_path(d)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(final.parent)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first; half-written .tmp-* directories are ignored."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT.match(p.name)
        if m and (p / "COMPLETE").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (keep <= 0 keeps all) and stale temp dirs."""
    for p in root.glob(".tmp-ckpt-*"):
        shutil.rmtree(p, ignore_errors=True)
    ckpts = list_checkpoints(root)
    if keep > 0:
        for _, p in ckpts[:-keep]:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, *, bundle_hash: str) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """Return (trainable tensors, optimizer state, loop state); refuse a checkpoint from another bundle."""
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("bundle_hash") != bundle_hash:
        raise BundleChanged(
            f"checkpoint {path} was written by bundle {state.get('bundle_hash', '?')[:12]}, but this bundle is "
            f"{bundle_hash[:12]}: the plan changed since training started. Delete {path.parent.parent} to start "
            "this stage over, or run the original bundle."
        )
    tensors = load_file(str(path / "trainable.safetensors"))
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    return tensors, optimizer_state, state
