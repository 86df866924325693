"""Generic loader for catalog data files: id = file stem, strict ids, duplicates rejected, did-you-mean."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tkc.schema.diagnostics import CompileError, Diagnostic, did_you_mean

CATALOG_DIR = Path(__file__).parent
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster catalog loading
_ID = re.compile(r"^[a-z0-9][a-z0-9_]*$")
M = TypeVar("M", bound=BaseModel)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = ""
    description: str = ""


class TemplateRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    template: str


class MediaExpansion(BaseModel):
    """How a dataset's placeholder for one media kind becomes the model's tokens: prefix + token x n + suffix."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    placeholder: str = Field(min_length=1)   # what datasets write: <image>, <video>, <audio>
    token: str = Field(min_length=1)         # the model's token, repeated n times
    prefix: str = ""
    suffix: str = ""
    # how n is computed (tkc.runtime.data.media): processor = the processor's own _get_num_multimodal_tokens;
    # patches_merged = the image processor's get_number_of_image_patches // merge_size^2; audio_frames = feature frames
    count: Literal["processor", "patches_merged", "audio_frames"]


class Multimodal(BaseModel):
    """A multimodal family's parts, as named in transformers' classes (module paths from the top model)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    model_class: str
    processor: str
    vision_tower: str | None = None
    audio_tower: str | None = None
    projector: str
    language_model: str
    lm_head: str = "lm_head"
    media: dict[Literal["images", "videos", "audios"], MediaExpansion] = Field(min_length=1)


class MoE(BaseModel):
    """A mixture-of-experts family's router and expert treatment (transformers' own names and computation)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    # the config key holding the router's auxiliary-loss weight, and the weight used when the config lacks it
    aux_loss_coef_key: str = "router_aux_loss_coef"
    aux_loss_coef: float = Field(default=0.001, ge=0)
    # whether LoRA adapts the expert weights by default (fused 3-D parameters in transformers 5: peft's
    # target_parameters); False keeps LoRA on attention (and dense) modules, experts frozen
    lora_experts: bool = False
    experts_path: str | None = None   # the experts module under a decoder layer, e.g. mlp.experts


class Verified(BaseModel):
    """How a family is verified, as `tkc catalog families` shows it (the tests keep each claim true)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    # the transformers class the family smoke test builds tiny from a config (tests/catalog/test_family_smoke.py);
    # None: the architecture is remote code (not in transformers), so no module tree can be checked offline
    smoke: str | None = None
    note: str = ""


class Family(Record):
    model_types: list[str] = Field(default_factory=list)
    architectures: list[str] = Field(default_factory=list)
    template: str = "default"
    hub_models: dict[str, TemplateRef] = Field(default_factory=dict)
    lora_targets: list[str] = Field(default_factory=list)
    layers_path: str = "model.layers"
    decoder_layer: str | None = None  # the decoder layer class FSDP shards as one unit (None: found at run)
    supports_bf16: bool = True
    multimodal: Multimodal | None = None   # vision/audio-language families only
    tied_embeddings: bool | None = None    # lm_head shares the input embeddings (None: as the config says)
    rope_scaling: dict[str, Any] | None = None   # the family's default rope scaling (None: as the config says)
    stop_tokens: list[str] = Field(default_factory=list)   # generation stops beyond the template's own
    moe: MoE | None = None                 # mixture-of-experts families only
    # the attention transformers runs (sdpa, or eager for a class that refuses sdpa: Gemma 2's logit softcapping)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    verified: Verified = Field(default_factory=Verified)


class Profile(Record):
    accelerator: str
    devices_per_node: int = 1
    nodes: int = 1
    memory_gb: float
    supports_bf16: bool = False
    supports_fp16: bool = False
    interconnect: str = "none"
    lockfile: str = "cpu"
    default_launch: str = "local"
    cpu_threads: int = 1       # intra-op threads per node, split among its processes (launch.cpu_threads)
    peak_tflops: dict[str, float] = Field(default_factory=dict)   # dense peak per device, by precision


class Vendor(BaseModel):
    """Where a template's text comes from: the vendor's model and a public copy of its chat_template, pinned."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(min_length=3)          # the vendor's model repository, e.g. Qwen/Qwen3-8B
    repo: str = Field(pattern=r"^[^/\s]+/[^/\s]+$")   # the public repository holding the copy (owner/name)
    path: str = Field(min_length=1)           # the file in it
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    where: str = ""                           # inside the file, when it holds several (an entry, a case name)


class TemplateMeta(Record):
    source: str = ""
    vendor: Vendor | None = None   # None: written by tkc (the source says from what)
    bos_token: str = ""
    eos_token: str = ""
    stop_tokens: list[str] = Field(default_factory=list)
    supports_system: bool = True
    supports_tools: bool = False
    default_system: str | None = None
    render_kwargs: dict[str, Any] = Field(default_factory=dict)


def load_records(folder: Path, model: type[M]) -> dict[str, M]:
    """Every `<id>.yaml` in a folder, validated; bad ids, duplicates and invalid records are errors."""
    out: dict[str, M] = {}
    problems: list[Diagnostic] = []
    for path in sorted(folder.glob("*.yaml")):
        rid = path.stem
        if not _ID.match(rid):
            problems.append(Diagnostic("CAT001", f"catalog id {rid!r} must match [a-z0-9_]+", "", str(path)))
            continue
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) or {}
            out[rid] = model.model_validate({**raw, "id": rid})
        except (ValidationError, yaml.YAMLError) as exc:
            problems.append(Diagnostic("CAT002", f"invalid catalog record: {exc}", "", str(path)))
    if problems:
        raise CompileError(problems)
    return out


def lookup(records: dict[str, M], rid: str, what: str, path: str = "") -> M:
    """records[rid], or a CompileError naming the unknown id with a did-you-mean."""
    if rid in records:
        return records[rid]
    hint = did_you_mean(rid, records) or f"known: {', '.join(sorted(records)[:12])}"
    raise CompileError([Diagnostic("CAT003", f"unknown {what} {rid!r}", path, hint=hint)])


@cache
def families() -> dict[str, Family]:
    return load_records(CATALOG_DIR / "families", Family)


@cache
def profiles() -> dict[str, Profile]:
    return load_records(CATALOG_DIR / "profiles", Profile)


@cache
def templates() -> dict[str, TemplateMeta]:
    return load_records(CATALOG_DIR / "templates", TemplateMeta)


def template_text(tid: str) -> str:
    return (CATALOG_DIR / "templates" / f"{tid}.jinja").read_bytes().decode("utf-8")  # verbatim: CRLF kept
