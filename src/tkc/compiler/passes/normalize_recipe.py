"""Pass 1: copy what the recipe says (or its schema defaults) into the plan, one stage at a time."""

from __future__ import annotations

from typing import Any

from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan
from tkc.schema.stages import TRAINING_KINDS

_BASE_FIELDS = {"kind", "name", "datasets", "init_from", "train", "finetuning"}
_METHOD_BLOCKS = ("lora", "freeze")   # blocks that apply only under their own method
_DATA_OPTIONS = ("cutoff_len", "packing", "train_on_prompt", "mask_history", "val_size", "mix")


def _stage_names(stages: list[Any]) -> list[str]:
    names: list[str] = []
    for stage in stages:
        base = stage.name or stage.kind
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _train(plan: Plan, i: int, stage: Any) -> dict[str, tuple[Any, str]]:
    top = plan.inputs.recipe.spec.train
    over = stage.train
    out: dict[str, tuple[Any, str]] = {}
    for key in type(top).model_fields:
        value = getattr(over, key, None) if over is not None else None
        src = source_of(plan, ("stages", i, "train", key))
        if value is None:
            value, src = getattr(top, key), source_of(plan, ("train", key))
        out[f"stages.{i}.train.{key}"] = (value, src)
    return out


def _finetuning(plan: Plan, i: int, stage: Any) -> dict[str, tuple[Any, str]]:
    spec = stage.finetuning or plan.inputs.recipe.spec.finetuning
    root: tuple[Any, ...] = ("stages", i, "finetuning") if stage.finetuning else ("finetuning",)
    out: dict[str, tuple[Any, str]] = {f"stages.{i}.finetuning.method": (spec.method, source_of(plan, (*root, "method")))}
    for block in ("lora", "freeze", "quantization"):
        value = getattr(spec, block)
        if value is None or block in _METHOD_BLOCKS and spec.method != block:
            continue  # a lora block under method full trains nothing: it is not part of the plan
        for key, item in value.model_dump().items():
            out[f"stages.{i}.finetuning.{block}.{key}"] = (item, source_of(plan, (*root, block, key)))
    return out


def _stage(plan: Plan, i: int, stage: Any, name: str) -> dict[str, tuple[Any, str]]:
    p = f"stages.{i}."
    out: dict[str, tuple[Any, str]] = {
        p + "name": (name, source_of(plan, ("stages", i, "name"))),
        p + "kind": (stage.kind, "recipe"),
        p + "index": (i, "derived:normalize_recipe"),
        p + "init_from": (stage.init_from, source_of(plan, ("stages", i, "init_from"))),
        p + "datasets": (stage.datasets, source_of(plan, ("stages", i, "datasets"))),
    }
    options = stage.model_dump(exclude=_BASE_FIELDS)
    if not options:
        out[p + "options"] = ({}, "default")
    for key, value in options.items():
        out[p + f"options.{key}"] = (value, source_of(plan, ("stages", i, key)))
    if stage.kind in TRAINING_KINDS:
        out.update(_train(plan, i, stage))
        out.update(_finetuning(plan, i, stage))
    return out


def normalize_recipe(plan: Plan) -> Plan:
    spec = plan.inputs.recipe.spec
    out: dict[str, tuple[Any, str]] = {
        "format_version": (1, "derived:normalize_recipe"),
        "name": (spec.name, "recipe"),
        "seed": (spec.train.seed, source_of(plan, ("train", "seed"))),
        "tracking.kind": (spec.tracking.kind, source_of(plan, ("tracking", "kind"))),
        "tracking.project": (spec.tracking.project or spec.name, source_of(plan, ("tracking", "project"))),
    }
    for key in _DATA_OPTIONS:
        out[f"data.{key}"] = (getattr(spec.data, key), source_of(plan, ("data", key)))
    for i, (stage, name) in enumerate(zip(spec.stages, _stage_names(spec.stages), strict=True)):
        out.update(_stage(plan, i, stage, name))
    return plan.with_values(out)
