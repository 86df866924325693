"""Recipe schema migrations: each step lifts a raw recipe dict from version N to N+1, explicitly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tkc.schema.recipe import SCHEMA_VERSION

Raw = dict[str, Any]


def _v0_to_v1(raw: Raw) -> Raw:
    """v0 kept LoRA options flat under finetuning (lora_rank, lora_alpha, lora_dropout, lora_targets)."""
    out = dict(raw)
    ft = dict(out["finetuning"]) if isinstance(out.get("finetuning"), dict) else {}
    if ft.get("lora") is not None and not isinstance(ft["lora"], dict):
        return {**out, "schema_version": 1}  # a malformed lora block: left for the schema to report
    lora = dict(ft.get("lora") or {})
    for old, new in (("lora_rank", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                     ("lora_targets", "targets")):
        if old in ft:
            lora[new] = ft.pop(old)
    if lora:
        ft["lora"] = lora
    if ft:
        out["finetuning"] = ft
    out["schema_version"] = 1
    return out


MIGRATIONS: dict[int, Callable[[Raw], Raw]] = {0: _v0_to_v1}


def migrate(raw: Raw) -> tuple[Raw, list[int]]:
    """Apply every migration from the recipe's schema_version to the current one; returns the steps run."""
    version = raw.get("schema_version", SCHEMA_VERSION)
    steps: list[int] = []
    while isinstance(version, int) and version < SCHEMA_VERSION and version in MIGRATIONS:
        raw = MIGRATIONS[version](raw)
        steps.append(version)
        version = raw["schema_version"]
    return raw, steps
