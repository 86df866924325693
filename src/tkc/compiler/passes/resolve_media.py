"""Pass: media per dataset (root, hashed files), the data's media bounds, and the family's multimodal parts.

Writes `datasets.<name>.media_root` / `media_files` (None / [] without media columns), `data.media` (None when no
dataset has media columns) and `model.multimodal` (the family's data; None for a text-only family). The records'
problems the loading step found (compiler/media.py: MM002, MM003, PATH001) are reported here.
"""

from __future__ import annotations

from typing import Any

from tkc.catalog.registry import families
from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan


def _datasets(plan: Plan) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    for name in plan.inputs.datasets:
        facts = plan.inputs.media.get(name)
        src = "derived:load_inputs(media)"
        out[f"datasets.{name}.media_root"] = (facts.root if facts else None, src)
        out[f"datasets.{name}.media_files"] = ([dict(f) for f in facts.files] if facts else [], src)
    return out


def _data_media(plan: Plan) -> dict[str, tuple[Any, str]]:
    if not plan.inputs.media:
        return {"data.media": (None, "derived:resolve_media(no media columns)")}
    spec, at = plan.inputs.recipe.spec.data.media, ("data", "media")
    root = next((f.root for f in plan.inputs.media.values()), None) if spec.root else None
    return {
        "data.media.root": (root, source_of(plan, (*at, "root"))),
        "data.media.max_image_bytes": (spec.max_image_bytes, source_of(plan, (*at, "max_image_bytes"))),
        "data.media.max_image_pixels": (spec.max_image_pixels, source_of(plan, (*at, "max_image_pixels"))),
    }


def _multimodal(plan: Plan) -> dict[str, tuple[Any, str]]:
    family = families().get(plan.get("model.family") or "")
    if family is None or family.multimodal is None:
        return {"model.multimodal": (None, f"family:{plan.get('model.family')}")}
    return {"model.multimodal": (family.multimodal.model_dump(), f"family:{family.id}")}


def resolve_media(plan: Plan) -> Plan:
    plan = plan.with_values({**_datasets(plan), **_data_media(plan), **_multimodal(plan)})
    return plan.with_diagnostics([d for facts in plan.inputs.media.values() for d in facts.problems])
