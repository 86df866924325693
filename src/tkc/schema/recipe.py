"""The recipe: what a user writes, as frozen pydantic models that forbid unknown keys (`*Spec`)."""

# No `from __future__ import annotations` here: pydantic would eval each annotation string at import.

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from tkc.bundle.media import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

SCHEMA_VERSION = 1
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=64)]


class Spec(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` are YAML floats, but no field means them (and canonical JSON has none)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class MoESpec(Spec):
    aux_loss_coef: Annotated[float, Field(ge=0)] | None = Field(None, description=(
        "Weight of the router's load-balancing loss added in training (0: none); default: the model config's own "
        "(router_aux_loss_coef), else the family's."))
    lora_experts: bool | None = Field(None, description=(
        "LoRA adapts the experts' fused weights too (peft target_parameters); default: the family's (false: "
        "experts frozen, adapters on the family's LoRA targets)."))


class ModelSpec(Spec):
    path: str = Field(description="Local model directory (relative to the recipe) or a hub id.")
    revision: str | None = Field(None, description="Hub revision (commit sha) that pins a hub model.")
    family: str | None = Field(None, description="Model family id; overrides detection from config.json.")
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code to run.")
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="`scratch` builds the model from config.json with random weights (seeded)."
    )
    moe: MoESpec | None = Field(None, description="Mixture-of-experts training settings (MoE families only).")


class DatasetSpec(Spec):
    path: str | None = Field(None, description="File, directory or hub id; relative paths from the recipe.")
    registry: str | None = Field(None, description="Name of an entry in `data.registry` (dataset_info.json).")
    format: Literal["alpaca", "sharegpt", "openai", "text"] | None = Field(
        None, description="Record layout; inferred from the registry entry or defaults to alpaca."
    )
    kind: Literal["sft", "preference", "kto", "text"] | None = Field(
        None, description="What the records train: sft turns, preference pairs, KTO labels or raw text."
    )
    columns: dict[str, str | None] | None = Field(None, description="Column mapping (prompt, response, ...).")
    tags: dict[str, str] | None = Field(None, description="Role-tag mapping for sharegpt-style turns.")
    split: str = Field("train", description="Split to read.")
    max_samples: Annotated[int, Field(gt=0)] | None = Field(None, description="Keep only the first N records.")
    weight: Annotated[float, Field(gt=0)] = Field(1.0, description="Mixing weight when interleaving.")
    revision: str | None = Field(None, description="Hub dataset revision; pins a hub dataset.")
    on_bad_record: Literal["error", "skip"] = Field("error", description="Skip malformed records (reported).")


class MediaSpec(Spec):
    root: str | None = Field(None, description=(
        "Folder (relative to the recipe) that media files are read from, and their paths are relative to; default: "
        "each dataset file's own folder. It must lie inside the read roots; URLs and paths out of it are refused."))
    max_image_bytes: Annotated[int, Field(gt=0)] = Field(MAX_IMAGE_BYTES, description="Largest image file read.")
    max_image_pixels: Annotated[int, Field(gt=0)] = Field(
        MAX_IMAGE_PIXELS, description="Largest image (width x height) decoded; a bigger one is a bad record.")


class DataSpec(Spec):
    datasets: dict[Name, DatasetSpec] = Field(min_length=1, max_length=1024,
                                              description="Named datasets used by stages (at most 1024).")
    registry: str | None = Field(None, description="A dataset_info.json-style registry file.")
    cutoff_len: Annotated[int, Field(ge=16, le=1_048_576)] = Field(1024, description="Max tokens per example.")
    packing: bool = Field(False, description="Pack several examples per sequence (no cross-attention).")
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens.")
    mask_history: bool = Field(False, description="Train only on the last assistant turn.")
    val_size: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="Fraction held out for evaluation.")
    mix: Literal["concat", "interleave"] = Field("concat", description="How several datasets are combined.")
    media: MediaSpec = Field(default_factory=MediaSpec, description="Where media files (images, videos, audios) "
                             "are read from, and their bounds.")


class LoraSpec(Spec):
    rank: Annotated[int, Field(gt=0, le=4096)] = Field(8, description="LoRA rank r.")
    alpha: Annotated[float, Field(gt=0)] | None = Field(None, description="LoRA alpha; default 2 x rank.")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="LoRA dropout.")
    targets: Literal["auto", "all"] | list[str] = Field("auto", description="Modules; auto = the family's.")
    variant: Literal["lora", "dora", "rslora"] = Field("lora", description="LoRA variant.")
    init: Literal["default", "pissa"] = Field("default", description="Adapter initialisation.")
    plus_ratio: Annotated[float, Field(gt=0)] | None = Field(None, description="LoRA+ lr ratio for B matrices.")
    modules_to_save: list[str] = Field(default_factory=list, description="Extra fully trained modules.")


class FreezeSpec(Spec):
    trainable_layers: Annotated[int, Field(gt=0)] = Field(2, description="Train the last N decoder layers.")
    trainable_modules: list[str] = Field(default_factory=list, description="Extra trainable module names.")


class QuantizationSpec(Spec):
    bits: Literal[4, 8] = Field(4, description="QLoRA base-model quantisation bits.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit quantisation type.")
    double_quant: bool = Field(True, description="Quantise the quantisation constants.")


class FinetuningSpec(Spec):
    method: Literal["full", "freeze", "lora"] = Field("lora", description="What is trained.")
    lora: LoraSpec | None = Field(None, description="LoRA options (method: lora).")
    freeze: FreezeSpec | None = Field(None, description="Freeze-tuning options (method: freeze).")
    quantization: QuantizationSpec | None = Field(None, description="QLoRA quantisation of the base model.")
    freeze_vision_tower: bool | None = Field(None, description=(
        "Vision-language models: keep the vision tower frozen (default true; with LoRA, false trains it in full)."))
    freeze_multi_modal_projector: bool | None = Field(None, description=(
        "Vision-language models: keep the projector frozen (default false: trained in full, beside LoRA too)."))
    freeze_language_model: bool | None = Field(None, description=(
        "Vision-language models: keep the language model frozen (default false; not with method lora)."))


class TrainSpec(Spec):
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = Field(1e-4, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Schedule.")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="Warmup as a step fraction.")
    epochs: Annotated[float, Field(gt=0)] = Field(1.0, description="Epochs (ignored when max_steps is set).")
    max_steps: Annotated[int, Field(gt=0)] | None = Field(None, description="Optimizer steps; wins over epochs.")
    global_batch_size: Annotated[int, Field(gt=0)] = Field(8, description="Examples per optimizer step.")
    micro_batch_size: Annotated[int, Field(gt=0)] | None = Field(None, description="Per device per forward.")
    padding: Literal["auto", "unpadded", "longest"] = Field(
        "auto", description="Micro-batch layout (same loss either way): longest = pad rows to the micro-batch's "
        "longest row, one forward; unpadded = each row (or run of equal-length rows) forwarded at its own length, "
        "or for pt/sft every row end to end in one forward, each attending to itself only; no padding computed; "
        "auto = unpadded on CPU, longest on accelerators (ppo/grpo always pad).")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(42, description="Seed for data order, init and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = from hardware.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    save_steps: Annotated[int, Field(gt=0)] = Field(100, description="Checkpoint interval in steps.")
    save_total_limit: Annotated[int, Field(gt=0)] = Field(2, description="Checkpoints kept.")
    logging_steps: Annotated[int, Field(gt=0)] = Field(1, description="Log interval in steps.")
    eval_steps: Annotated[int, Field(gt=0)] | None = Field(None, description="Eval interval (needs val_size).")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="AdamW weight decay.")
    max_grad_norm: Annotated[float, Field(gt=0)] = Field(1.0, description="Gradient clipping norm.")
    neftune_alpha: Annotated[float, Field(gt=0)] | None = Field(None, description="NEFTune noise alpha.")


# Stage-level overrides: every TrainSpec field, optional, None meaning "inherit".
TrainOverride = create_model(  # type: ignore[call-overload]
    "TrainOverride",
    __base__=Spec,
    **{
        name: (info.annotation | None, Field(None, description=info.description))  # type: ignore[operator]
        for name, info in TrainSpec.model_fields.items()
    },
)
