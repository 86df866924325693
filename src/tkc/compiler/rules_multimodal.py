"""Rules about media columns (listed in rules.py's RULES): media trains only where a family and stage take it."""

from __future__ import annotations

from collections.abc import Iterator

from tkc.bundle.media import ENCODED_MEDIA, MEDIA_STAGE_KINDS
from tkc.compiler.media import media_kinds
from tkc.compiler.plan import Plan

Violation = tuple[tuple[str | int, ...], str, str | None]


def _columns_key(plan: Plan, name: str) -> tuple[str | int, ...]:
    """The dataset's columns key when the recipe wrote one, else the dataset (its registry entry names them)."""
    at: tuple[str | int, ...] = ("data", "datasets", name)
    return (*at, "columns") if (*at, "columns") in plan.inputs.recipe.positions else at


def _refusal(plan: Plan, kind: str) -> str | None:
    """Why a media kind cannot train with this model, or None."""
    family, mm = plan.get("model.family"), plan.get("model.multimodal")
    if mm is None:
        return f"model family {family!r} is text-only: it has no multimodal parts to take {kind}"
    if kind not in mm["media"]:
        return f"model family {family!r} takes {', '.join(mm['media'])}, not {kind}"
    if kind not in ENCODED_MEDIA:
        return f"tkc run does not encode {kind} yet (it encodes {', '.join(ENCODED_MEDIA)})"
    return None


def media_needs_multimodal(plan: Plan) -> Iterator[Violation]:
    """Media columns for a model (or stage) that cannot take them would train as text only, silently."""
    users = {ds: [(plan.get(f"stages.{i}.name"), plan.get(f"stages.{i}.kind"))
                  for i in range(plan.stage_count()) if ds in (plan.get(f"stages.{i}.datasets") or [])]
             for ds in plan.inputs.datasets}
    for name in plan.inputs.datasets:
        for kind in media_kinds(plan.get(f"datasets.{name}.columns")):
            why = _refusal(plan, kind)
            if why:
                yield (_columns_key(plan, name), f"dataset {name!r} has {kind} (column "
                       f"{plan.get(f'datasets.{name}.columns')[kind]!r}), but {why}; its records "
                       "would train as text only", "use a multimodal model (tkc catalog families), or remove the "
                       f"{kind} column from columns")
                continue
            for stage, stage_kind in users[name]:
                if stage_kind not in MEDIA_STAGE_KINDS:
                    yield (_columns_key(plan, name), f"dataset {name!r} has {kind}, but stage {stage!r} "
                           f"({stage_kind}) does not feed media to the model (stages that do: "
                           f"{', '.join(MEDIA_STAGE_KINDS)})", None)
