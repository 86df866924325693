"""Pass 2: which model family this is, from config.json (model_type/architectures) or the hub catalog."""

from __future__ import annotations

from typing import Any

from tkc.catalog.registry import Family, families
from tkc.compiler.passes._util import source_of
from tkc.compiler.passes.model_quirks import resolve_attention, resolve_moe
from tkc.compiler.plan import Plan
from tkc.schema.diagnostics import Diagnostic, did_you_mean

FALLBACK_CODE = "MODEL004"
FALLBACK = f"fallback:no catalog family ({FALLBACK_CODE})"   # the provenance of every value a family would set


def _by_config(config: dict[str, Any], fams: dict[str, Family]) -> tuple[list[str], str]:
    model_type = str(config.get("model_type", ""))
    hits = [fid for fid, f in fams.items() if model_type and model_type in f.model_types]
    if not hits:
        archs = set(config.get("architectures") or [])
        hits = [fid for fid, f in fams.items() if archs & set(f.architectures)]
    return hits, model_type


def _by_hub_id(hub_id: str, fams: dict[str, Family]) -> list[str]:
    return [fid for fid, f in fams.items() if hub_id.lower() in {k.lower() for k in f.hub_models}]


def _detect(plan: Plan, fams: dict[str, Family]) -> tuple[str | None, str, str | None]:
    """(family, model_type, error message)."""
    facts = plan.inputs.model
    if facts.config is not None:
        hits, model_type = _by_config(dict(facts.config), fams)
        what = f"config.json model_type {model_type!r}"
    else:
        hits, model_type = _by_hub_id(facts.path, fams), ""
        what = f"hub id {facts.path!r} (not on disk, not in the catalog)"
    if len(hits) == 1:
        return hits[0], model_type or (fams[hits[0]].model_types or [""])[0], None
    if not hits and facts.config is not None:
        return None, model_type, None   # a model read from disk compiles with the fallbacks (MODEL004 says so)
    if not hits:
        return None, model_type, f"cannot detect the model family from {what}; set model.family, or download " \
                                 "the model to a folder so its config.json is read"
    return None, model_type, f"{what} matches several families ({', '.join(sorted(hits))}); set model.family"


def _default_cutoff(plan: Plan) -> dict[str, tuple[Any, str]]:
    """The default cutoff_len, lowered to the model's positions when it has fewer (a recipe's own value above
    them is DATA011, not lowered: the user asked for it)."""
    limit, cutoff = plan.inputs.model.max_positions(), plan.get("data.cutoff_len")
    if limit is None or not isinstance(cutoff, int) or cutoff <= limit or \
            source_of(plan, ("data", "cutoff_len")) != "default":
        return {}
    return {"data.cutoff_len": (limit, "derived:resolve_model_family(max_position_embeddings)")}


def _decoder_layer(family: str | None, fams: dict[str, Family]) -> tuple[str | None, str]:
    """The family's decoder layer class (what FSDP shards as one unit); None, with the fallback in its source,
    when the family names none (remote-code models whose layer class differs between checkpoints)."""
    fam = fams.get(family or "")
    if fam is not None and fam.decoder_layer:
        return fam.decoder_layer, f"family:{family}"
    if fam is None:
        return None, f"{FALLBACK} (the runtime finds the layer list)"
    return None, f"derived:resolve_model_family(family {family} names no decoder_layer: the runtime finds the layer list)"


def resolve_model_family(plan: Plan) -> Plan:
    spec = plan.inputs.recipe.spec.model
    facts = plan.inputs.model
    fams = families()
    src = "recipe"
    family: str | None
    if spec.family:
        family, model_type, error = spec.family, "", None
        if family not in fams:
            error = f"unknown family {family!r} ({did_you_mean(family, fams) or 'see tkc catalog families'})"
        elif facts.config is not None:
            model_type = str(facts.config.get("model_type", ""))
    else:
        (family, model_type, error), src = _detect(plan, fams), "derived:resolve_model_family"
    out = {
        "model.source": ("local" if facts.local else "hub", "derived:resolve_model_family"),
        "model.path": (facts.path, source_of(plan, ("model", "path"))),
        "model.revision": (spec.revision, source_of(plan, ("model", "revision"))),
        "model.init": (spec.init, source_of(plan, ("model", "init"))),
        "model.trust_remote_code": (spec.trust_remote_code, source_of(plan, ("model", "trust_remote_code"))),
        "model.files": (dict(facts.files), "derived:load_inputs"),
        "model.family": (family, src if family or error else FALLBACK),
        "model.model_type": (model_type or None, "derived:resolve_model_family"),
        "model.decoder_layer": _decoder_layer(family, fams),
    }
    fam, config = fams.get(family or ""), dict(facts.config) if facts.config is not None else None
    out.update({**resolve_moe(fam, config, spec.moe), **resolve_attention(fam)})
    plan = plan.with_values({**out, **_default_cutoff(plan)})
    refused = any(key == ("model", "path") for key, _ in plan.inputs.paths.outside)
    if error and not (refused and facts.config is None):  # a folder not read (PATH001) is no hub id
        plan = plan.with_diagnostics([plan.diagnostic("MODEL001", error, ("model",))])
    return plan


def family_fallback_notes(plan: Plan) -> list[Diagnostic]:
    """MODEL004: a model read from disk that no catalog family matches compiled with fallbacks (LoRA targets
    q_proj/v_proj, layers model.layers, the decoder layer found at run, the tokenizer's own template); the note
    names the family file that would make it exact. A note, like DEAD001: printed by compile and explain."""
    config = plan.inputs.model.config
    if plan.get("model.family") is not None or config is None:
        return []
    model_type = str(config.get("model_type") or "") or "<model_type>"
    archs = [str(a) for a in config.get("architectures") or []]
    message = (f"note: no catalog family matches config.json model_type {model_type!r} (architectures "
               f"{', '.join(archs) or 'none'}); compiled with fallbacks: LoRA targets q_proj, v_proj, layers path "
               "model.layers, decoder layer found at run, template auto (the tokenizer's own)")
    hint = (f"to make it exact, add src/tkc/catalog/families/{model_type}.yaml with model_types: [{model_type}], "
            f"architectures: [{', '.join(archs)}], lora_targets, layers_path, decoder_layer and template, "
            "or set model.family to a family with the same module names")
    return [plan.diagnostic(FALLBACK_CODE, message, ("model",), hint)]
