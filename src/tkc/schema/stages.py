"""Stage specs: a discriminated union on `kind`, each with its own options."""

# No `from __future__ import annotations` here: pydantic would eval each annotation string at import.

from typing import Annotated, Literal

from pydantic import Field

from tkc.bundle.kinds import REWARD_FUNCTIONS
from tkc.schema.recipe import FinetuningSpec, Name, Spec, TrainOverride


class StageBase(Spec):
    name: Name | None = Field(None, description="Stage name; defaults to its kind (suffixed when repeated).")
    datasets: list[Name] | None = Field(None, description="Dataset names; default: every compatible one.")
    init_from: str = Field("previous", description="previous | base | <stage name>: where weights start.")
    train: TrainOverride | None = Field(None, description="Overrides of the top-level train options.")  # type: ignore[valid-type]
    finetuning: FinetuningSpec | None = Field(None, description="Overrides the top-level finetuning.")


class PtStage(StageBase):
    kind: Literal["pt"]


class SftStage(StageBase):
    kind: Literal["sft"]


class RmStage(StageBase):
    kind: Literal["rm"]


class DpoStage(StageBase):
    kind: Literal["dpo"]
    loss: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo"] = Field("sigmoid", description="Preference loss.")
    beta: Annotated[float, Field(gt=0)] = Field(0.1, description="Inverse temperature.")
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = Field(0.0, description="cDPO smoothing.")
    simpo_gamma: Annotated[float, Field(ge=0)] = Field(0.5, description="SimPO target margin.")
    ftx: Annotated[float, Field(ge=0)] = Field(0.0, description="Weight of an SFT loss on chosen.")


class KtoStage(StageBase):
    kind: Literal["kto"]
    beta: Annotated[float, Field(gt=0)] = Field(0.1, description="Inverse temperature.")
    desirable_weight: Annotated[float, Field(gt=0)] = Field(1.0, description="Weight of desirable examples.")
    undesirable_weight: Annotated[float, Field(gt=0)] = Field(1.0, description="Weight of undesirable ones.")


class PpoStage(StageBase):
    kind: Literal["ppo"]
    reward_model: str = Field(description=(
        "An earlier rm stage of this recipe, or another compiled bundle: path/to/bundle (its only rm stage) or "
        "path/to/bundle:stage, relative to the recipe like dataset paths. The bundle's hash is recorded; `tkc run` "
        "needs that rm stage finished and refuses the bundle if it changed since compile."))
    ppo_epochs: Annotated[int, Field(gt=0)] = Field(1, description="PPO epochs per batch.")
    kl_coef: Annotated[float, Field(ge=0)] = Field(0.05, description="KL penalty to the reference.")
    clip_range: Annotated[float, Field(gt=0)] = Field(0.2, description="Policy ratio clip.")
    max_new_tokens: Annotated[int, Field(gt=0)] = Field(32, description="Rollout length.")
    temperature: Annotated[float, Field(gt=0)] = Field(1.0, description="Rollout sampling temperature.")




class GrpoStage(StageBase):
    kind: Literal["grpo"]
    reward_model: str | None = Field(None, description=(
        "An earlier rm stage of this recipe, or another compiled bundle: path/to/bundle[:stage] (as for ppo)."))
    reward_function: Literal[REWARD_FUNCTIONS] | None = Field(  # type: ignore[valid-type]
        None, description="A built-in reward function.")
    num_generations: Annotated[int, Field(gt=1)] = Field(4, description="Completions per prompt.")
    max_new_tokens: Annotated[int, Field(gt=0)] = Field(32, description="Completion length.")
    temperature: Annotated[float, Field(gt=0)] = Field(1.0, description="Sampling temperature of rollouts.")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(1.0, description="Nucleus sampling mass.")
    top_k: Annotated[int, Field(ge=0)] = Field(0, description="Top-k sampling; 0 = off.")
    beta: Annotated[float, Field(ge=0)] = Field(0.0, description="KL coefficient to the start policy (LoRA only).")
    epsilon: Annotated[float, Field(gt=0)] = Field(0.2, description="Clip range of the importance ratio.")
    num_iterations: Annotated[int, Field(gt=0)] = Field(1, description="Updates per generated batch.")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field("dapo", description="GRPO loss normalisation.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Advantage scaling.")
    mask_truncated_completions: bool = Field(False, description="Drop completions cut at max_new_tokens.")


class BenchmarkSpec(Spec):
    path: str = Field(description=(
        "Folder of the benchmark's CSV files in its usual layout, relative to the recipe like dataset paths: "
        "mmlu: data/{dev,val,test}/<subject>_<split>.csv (the folder holding data/, or data/ itself); "
        "cmmlu: {dev,test}/<subject>.csv; ceval: {dev,val,test}/<subject>_<split>.csv. Every file read is "
        "hashed into the bundle and checked again by `tkc run`."))
    split: Literal["dev", "val", "test"] | None = Field(
        None, description="Split scored; default test (mmlu, cmmlu), val (ceval: its test answers are not public).")
    n_shot: Annotated[int, Field(ge=0)] = Field(
        5, description="Solved examples from the subject's dev split put before each question (its first n_shot).")
    subjects: list[str] | None = Field(None, description="Subjects to score (file stems); default: every one found.")
    lang: Literal["en", "zh"] | None = Field(
        None, description="Prompt wording (LLaMA-Factory's en/zh eval templates); default en for mmlu, zh otherwise.")
    prompt: Literal["chat", "plain"] = Field(
        "chat", description="chat: the shots as user/assistant turns in the bundle's chat template, the answer "
        "letter scored right after the assistant prefix (LLaMA-Factory's way). plain: one text, 'Answer: X' after "
        "each shot, the letter scored after 'Answer:' with its leading space (for base models).")
    batch_size: Annotated[int, Field(gt=0)] = Field(4, description="Questions per forward pass.")


class EvalStage(StageBase):
    kind: Literal["eval"]
    metric: Literal["exact_match", "loss", "perplexity", "mmlu", "cmmlu", "ceval"] = Field(
        "exact_match", description="What is scored, into metrics.json. exact_match: share of rows whose greedy "
        "continuation of the prompt (max_new_tokens, cut at a stop token) decodes to the reference. loss: mean "
        "negative log-likelihood in nats per trained token (the tokens sft would train on: assistant turns, unless "
        "train_on_prompt), summed over every row and divided by the token count, under the model under test. "
        "perplexity: exp(loss); metrics.json holds both. mmlu | cmmlu | ceval: multiple-choice accuracy on the "
        "`benchmark` files, each question scored by the model's next-token logits of the letters A-D (per subject, "
        "per category and the macro average over subjects).")
    max_new_tokens: Annotated[int, Field(gt=0)] = Field(16, description="Generation length.")
    benchmark: BenchmarkSpec | None = Field(None, description="The benchmark files (metric mmlu, cmmlu or ceval).")


class ExportStage(StageBase):
    kind: Literal["export"]
    merge_adapter: bool = Field(True, description="true: merge the source stage's LoRA adapter into full weights. "
                                "false: save the adapter itself (adapter_config.json, adapter_model.safetensors) with "
                                "the tokenizer and chat template; the source stage must be a LoRA stage.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Saved weight dtype.")


class InferStage(StageBase):
    kind: Literal["infer"]
    engine: Literal["hf", "vllm"] = Field("hf", description="Inference engine.")
    max_new_tokens: Annotated[int, Field(gt=0)] = Field(128, description="Generation length.")
    temperature: Annotated[float, Field(ge=0)] = Field(0.0, description="0 = greedy.")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(1.0, description="Nucleus sampling mass.")


StageSpec = Annotated[
    PtStage | SftStage | RmStage | DpoStage | KtoStage | PpoStage | GrpoStage | EvalStage | ExportStage | InferStage,
    Field(discriminator="kind"),
]
TRAINING_KINDS = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")
