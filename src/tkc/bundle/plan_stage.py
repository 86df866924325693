"""The typed plan's stages: training options, fine-tuning method and each kind's own options (see bundle/plan.py)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

TRAINING_KINDS = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")   # stages with `train` and `finetuning`


@attrs.frozen
class ResolvedTrain:
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    epochs: float
    max_steps: int | None
    global_batch_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    padding: str                   # unpadded | longest (TrainSpec.padding and runtime/attention.py say how)
    seed: int
    precision: str                 # fp32 | bf16 | fp16
    gradient_checkpointing: bool
    save_steps: int
    save_total_limit: int
    logging_steps: int
    eval_steps: int | None
    weight_decay: float
    max_grad_norm: float
    neftune_alpha: float | None
    optimizer: str
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    deterministic: bool


@attrs.frozen
class ResolvedLora:
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    variant: str
    init: str
    plus_ratio: float | None
    modules_to_save: tuple[str, ...]


@attrs.frozen
class ResolvedFreeze:
    trainable_layers: int
    trainable_modules: tuple[str, ...]
    layers_path: str


@attrs.frozen
class ResolvedQuantization:
    bits: int
    quant_type: str
    double_quant: bool


@attrs.frozen
class ResolvedMultimodalSwitches:
    """Which parts of a vision-language model stay frozen (recipe or default; paths: model.multimodal)."""
    freeze_vision_tower: bool
    freeze_multi_modal_projector: bool
    freeze_language_model: bool


@attrs.frozen
class ResolvedFinetuning:
    """`method` always; each block only when it applies (lora for method lora, freeze for method freeze,
    multimodal for a model with model.multimodal)."""
    method: str                    # full | freeze | lora
    lora: ResolvedLora | None = None
    freeze: ResolvedFreeze | None = None
    quantization: ResolvedQuantization | None = None
    multimodal: ResolvedMultimodalSwitches | None = None


@attrs.frozen
class ResolvedNoOptions:
    """pt, sft and rm stages have no options of their own."""


@attrs.frozen
class ResolvedDpoOptions:
    loss: str
    beta: float
    label_smoothing: float
    simpo_gamma: float
    ftx: float


@attrs.frozen
class ResolvedKtoOptions:
    beta: float
    desirable_weight: float
    undesirable_weight: float


@attrs.frozen
class ResolvedRewardBundle:
    """A reward model from another bundle: its path (from the source root), hash and rm stage."""
    path: str
    bundle_hash: str
    stage: str


@attrs.frozen
class ResolvedPpoOptions:
    reward_model: str
    reward_bundle: ResolvedRewardBundle | None
    ppo_epochs: int
    kl_coef: float
    clip_range: float
    max_new_tokens: int
    temperature: float


@attrs.frozen
class ResolvedGrpoOptions:
    reward_model: str | None
    reward_bundle: ResolvedRewardBundle | None
    reward_function: str | None
    num_generations: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    beta: float
    epsilon: float
    num_iterations: int
    loss_type: str
    scale_rewards: str
    mask_truncated_completions: bool


@attrs.frozen
class ResolvedBenchmarkFile:
    path: str                      # relative POSIX path from the source root
    sha256: str
    size: int


@attrs.frozen
class ResolvedBenchmarkSubject:
    id: str                        # the file stem (abstract_algebra)
    name: str                      # the title the prompt names (abstract algebra)
    category: str | None           # STEM | Humanities | Social Sciences | Other; None: a subject the catalog lacks
    questions: int
    file: ResolvedBenchmarkFile    # the scored split's file
    dev: ResolvedBenchmarkFile | None   # the dev split's file (the shots); None when n_shot is 0


@attrs.frozen
class ResolvedBenchmark:
    """A multiple-choice benchmark eval (compiler/passes/resolve_benchmarks.py; bundle/benchmarks.py reads it)."""
    name: str                      # mmlu | cmmlu | ceval
    path: str
    split: str
    n_shot: int
    lang: str                      # en | zh
    prompt: str                    # chat | plain
    batch_size: int
    subjects: tuple[ResolvedBenchmarkSubject, ...]


@attrs.frozen
class ResolvedEvalOptions:
    metric: str
    max_new_tokens: int
    benchmark: ResolvedBenchmark | None = None   # metric mmlu | cmmlu | ceval only


@attrs.frozen
class ResolvedExportOptions:
    merge_adapter: bool
    dtype: str


@attrs.frozen
class ResolvedInferOptions:
    engine: str
    max_new_tokens: int
    temperature: float
    top_p: float


@attrs.frozen
class ResolvedMemoryEstimate:
    """Per-device bytes predicted at compile (tkc.compiler.estimate); `needed` is what the profile's memory must
    hold (a CPU node's processes share its RAM), `available` the profile's memory times the usable fraction."""
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    buffers_bytes: int
    overhead_bytes: int
    total_bytes: int
    offloaded_bytes: int           # kept in host memory by offload (not in total)
    needed_bytes: int
    available_bytes: int
    fits: bool


@attrs.frozen
class ResolvedTimeEstimate:
    flops_per_step: float
    peak_tflops: float             # the hardware profile's dense peak for the stage's precision
    efficiency: float              # assumed fraction of the peak sustained
    step_seconds: float
    steps: int | None              # max_steps; None when the step count depends on the data (epochs)
    total_seconds: float | None


@attrs.frozen
class ResolvedEstimate:
    """A training stage's compile-time estimate; `missing` says why a part is None (unknown shape, no peak)."""
    basis: str | None              # where the model's shape came from: model config.json | catalog:model_shapes
    missing: str | None
    params: int | None
    trainable_params: int | None
    memory: ResolvedMemoryEstimate | None
    time: ResolvedTimeEstimate | None


ResolvedStageOptions = (ResolvedNoOptions | ResolvedDpoOptions | ResolvedKtoOptions | ResolvedPpoOptions
                        | ResolvedGrpoOptions | ResolvedEvalOptions | ResolvedExportOptions | ResolvedInferOptions)
OPTIONS_BY_KIND: Mapping[str, type] = {
    "pt": ResolvedNoOptions, "sft": ResolvedNoOptions, "rm": ResolvedNoOptions, "dpo": ResolvedDpoOptions,
    "kto": ResolvedKtoOptions, "ppo": ResolvedPpoOptions, "grpo": ResolvedGrpoOptions, "eval": ResolvedEvalOptions,
    "export": ResolvedExportOptions, "infer": ResolvedInferOptions,
}


@attrs.frozen
class ResolvedStage:
    """One stage; `train` and `finetuning` are present exactly for the training kinds (None otherwise)."""
    index: int
    name: str
    kind: str
    init_from: str | None          # the stage whose weights this one starts from; None: the base model
    datasets: tuple[str, ...]
    options: ResolvedStageOptions
    train: ResolvedTrain | None
    finetuning: ResolvedFinetuning | None
    device: str                    # cpu | cuda | npu: the hardware profile's accelerator (rocm runs as cuda)
    estimate: ResolvedEstimate | None = None   # training stages only (compiler/passes/estimate_resources.py)
