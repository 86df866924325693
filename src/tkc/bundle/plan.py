"""The typed plan: resolved.json described once, the one interface between `tkc compile` and `tkc run`.

The compiler's last step structures its resolved tree into a `ResolvedPlan` and writes `unstructure_plan(plan)`;
the runtime calls `load_plan` once and reads typed fields. Nothing here has a default for a value the compiler
always writes: every default lives in the schema or a compiler pass. A tree that does not structure (missing key,
wrong type, unknown key) raises `PlanError` naming the key path, e.g. `stages[2].options.beta: expected float, got
str`. Torch-free and schema-free: the runtime imports this module and nothing of the compiler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.v import transform_error

from tkc.bundle.plan_stage import (  # noqa: F401  (re-exported: the plan's types are all importable from here)
    OPTIONS_BY_KIND,
    TRAINING_KINDS,
    ResolvedDpoOptions,
    ResolvedEvalOptions,
    ResolvedExportOptions,
    ResolvedFinetuning,
    ResolvedFreeze,
    ResolvedGrpoOptions,
    ResolvedInferOptions,
    ResolvedKtoOptions,
    ResolvedLora,
    ResolvedNoOptions,
    ResolvedPpoOptions,
    ResolvedQuantization,
    ResolvedRewardBundle,
    ResolvedStage,
    ResolvedStageOptions,
    ResolvedTrain,
)


class PlanError(ValueError):
    """resolved.json does not match the plan types; `errors` holds one `path: problem` line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


# ---------------------------------------------------------------- model, data, hardware, launch, environment

@attrs.frozen
class ResolvedMediaExpansion:
    """How a dataset's placeholder for one media kind becomes the model's tokens: prefix + token x n + suffix."""
    placeholder: str               # <image> | <video> | <audio>
    token: str                     # the model's token, repeated n times
    prefix: str
    suffix: str
    count: str                     # processor | patches_merged | audio_frames (tkc.runtime.data.media)


@attrs.frozen
class ResolvedMultimodal:
    """A multimodal family's parts (family data): classes and module paths as named in transformers."""
    model_class: str
    processor: str
    vision_tower: str | None
    audio_tower: str | None
    projector: str
    language_model: str
    lm_head: str
    media: Mapping[str, ResolvedMediaExpansion]   # media kind (images/videos/audios) -> its expansion


@attrs.frozen
class ResolvedMoE:
    """A mixture-of-experts family's training settings (family data, the model config's own coefficient)."""
    aux_loss_coef: float           # weight of the router's load-balancing loss added to the LM loss (0: none)
    lora_experts: bool             # LoRA adapts the experts' fused weights (peft target_parameters); else frozen
    experts_path: str | None       # the experts module under a decoder layer, e.g. mlp.experts


@attrs.frozen
class ResolvedModel:
    source: str                    # local | hub
    path: str                      # relative POSIX path from the source root, or the hub id
    revision: str | None
    family: str | None             # None: no catalog family matched (MODEL004 names the fallbacks used)
    model_type: str | None
    init: str                      # pretrained | scratch
    trust_remote_code: bool
    files: Mapping[str, str]       # file name -> sha256 (local models)
    # the decoder layer class FSDP shards as one unit (family data); None: the family names none and the
    # runtime finds the layer list (default: bundles compiled before the field, hand-written plans)
    decoder_layer: str | None = None
    # vision/audio-language families (family data); None: a text-only model (and bundles compiled before the field)
    multimodal: ResolvedMultimodal | None = None
    # mixture-of-experts families (family data); None: a dense model (and bundles compiled before the field)
    moe: ResolvedMoE | None = None
    # the attention transformers runs: sdpa, or eager for a class that refuses it (family data)
    attn_implementation: str = "sdpa"


@attrs.frozen
class ResolvedColumns:
    """Column names of a dataset's records (None: the dataset has no such column)."""
    prompt: str | None
    query: str | None
    response: str | None
    system: str | None
    history: str | None
    tools: str | None
    messages: str | None
    chosen: str | None
    rejected: str | None
    kto_tag: str | None
    images: str | None
    videos: str | None
    audios: str | None
    text: str | None


@attrs.frozen
class ResolvedTags:
    """Role-tag mapping of sharegpt/openai turns (None for alpaca and text)."""
    role: str | None
    content: str | None
    user: str | None
    assistant: str | None
    observation: str | None
    function: str | None
    system: str | None


@attrs.frozen
class ResolvedDataFile:
    path: str
    sha256: str
    size: int


@attrs.frozen
class ResolvedDataset:
    name: str
    source: str                    # local | hub
    path: str
    revision: str | None
    file_type: str
    files: tuple[ResolvedDataFile, ...]
    format: str                    # alpaca | sharegpt | openai | text
    kind: str                      # sft | preference | kto | text
    columns: ResolvedColumns
    tags: ResolvedTags
    split: str
    max_samples: int | None
    weight: float
    on_bad_record: str             # error | skip
    # the folder media files are read from (relative POSIX from the source root) and every media file the
    # records name, hashed; None and () for a dataset without media columns (tkc.bundle.media)
    media_root: str | None = None
    media_files: tuple[ResolvedDataFile, ...] = ()


@attrs.frozen
class ResolvedData:
    cutoff_len: int
    packing: bool
    train_on_prompt: bool
    mask_history: bool
    val_size: float
    mix: str                       # concat | interleave
    media: ResolvedMedia | None = None   # None when no dataset has media columns


@attrs.frozen
class ResolvedMedia:
    """Bounds on media files (tkc.bundle.media), and the recipe's media root (None: each dataset's own folder)."""
    root: str | None
    max_image_bytes: int
    max_image_pixels: int


@attrs.frozen
class ResolvedTemplate:
    """The chat template: its text is the bundle file `file`; the rest is what rendering needs."""
    id: str
    source: str
    file: str
    bos_token: str
    eos_token: str
    stop_tokens: tuple[str, ...]
    supports_system: bool
    supports_tools: bool
    default_system: str | None
    render_kwargs: Mapping[str, Any]
    # the ISO instant strftime_now reads when the template reads the clock (absent, None, for one that does not)
    now: str | None = None


@attrs.frozen
class ResolvedHardware:
    profile: str
    accelerator: str
    devices_per_node: int
    nodes: int
    memory_gb: float
    supports_bf16: bool
    supports_fp16: bool
    interconnect: str
    lockfile: str
    default_launch: str
    cpu_threads: int


@attrs.frozen
class ResolvedSlurm:
    partition: str | None
    account: str | None
    time: str


@attrs.frozen
class ResolvedKubernetes:
    image: str
    namespace: str


@attrs.frozen
class ResolvedLaunch:
    kind: str
    nnodes: int
    nproc_per_node: int
    world_size: int
    backend: str
    master_port: int
    zero_stage: int | None
    offload: bool
    rdzv_timeout_s: int
    cpu_threads: int               # per process
    slurm: ResolvedSlurm | None
    kubernetes: ResolvedKubernetes | None


@attrs.frozen
class ResolvedEnvironment:
    lockfile: str
    file: str
    pins: Mapping[str, str]


@attrs.frozen
class ResolvedTracking:
    kind: str
    project: str


@attrs.frozen
class ResolvedPlan:
    format_version: int
    name: str
    seed: int
    model: ResolvedModel
    template: ResolvedTemplate | None      # None when no stage renders chat (pt/export only)
    data: ResolvedData
    datasets: Mapping[str, ResolvedDataset]
    stages: tuple[ResolvedStage, ...]
    hardware: ResolvedHardware
    launch: ResolvedLaunch
    environment: ResolvedEnvironment
    tracking: ResolvedTracking
    hermetic: bool
    non_hermetic_reasons: tuple[str, ...]
    read_roots: tuple[str, ...]

    def stage(self, name: str) -> ResolvedStage:
        return next(s for s in self.stages if s.name == name)


def structure_plan(tree: Any) -> ResolvedPlan:
    """resolved.json's tree -> ResolvedPlan; PlanError naming every key path that does not fit."""
    from tkc.bundle.plan_converter import converter

    try:
        return converter.structure(tree, ResolvedPlan)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise PlanError(_messages(exc)) from None


def unstructure_plan(plan: ResolvedPlan) -> dict[str, Any]:
    """ResolvedPlan -> the JSON tree written as resolved.json (canonical JSON sorts the keys)."""
    from tkc.bundle.plan_converter import converter

    out: dict[str, Any] = converter.unstructure(plan)
    return out


def load_plan(bundle_dir: Path | str) -> ResolvedPlan:
    """Read and structure `<bundle>/resolved.json`."""
    path = Path(bundle_dir) / "resolved.json"
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError([f"{path.name}: cannot read: {exc}"]) from None
    return structure_plan(tree)


def _format(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, KeyError):
        return "missing key"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key{'s' if len(exc.extra_fields) > 1 else ''} {', '.join(sorted(exc.extra_fields))}"
    return str(exc)


def _messages(exc: BaseException) -> list[str]:
    out = []
    for line in transform_error(exc, path="", format_exception=_format):
        problem, _, path = line.rpartition(" @ ")
        out.append(f"{path.lstrip('.') or '(top level)'}: {problem}")
    return out

