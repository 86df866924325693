"""The grpo stage's bundle -> TRL GRPOConfig mapping (TRL's own layout: grpo_config.py beside the trainer): pure, no
training, so a test maps a resolved stage and reads the fields back.

Every field that matters is set from the bundle, never left to TRL's defaults (which differ from tkc's and change
between releases: bf16 on, gradient checkpointing on, lr 1e-6, logging every 10 steps, reporting to every installed
tracker). The GRPO values come from the stage's resolved options, which the compiler writes out in full (schema
defaults included); the optimizer and schedule fields are placeholders: tkc passes its own optimizer and schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tkc.bundle.plan import ResolvedGrpoOptions, ResolvedStage

# The stage options that become GRPOConfig fields under the same name.
SAME_NAME = ("num_generations", "temperature", "top_p", "top_k", "beta", "num_iterations", "epsilon", "loss_type",
             "scale_rewards", "mask_truncated_completions")


def _trainer_fields(t: dict[str, Any], *, cpu: bool, total: int, output_dir: Path) -> dict[str, Any]:
    """transformers.TrainingArguments fields: seed, precision, batch geometry, steps, saving, logging."""
    return dict(
        output_dir=str(output_dir),
        seed=t.seed, data_seed=t.seed, full_determinism=bool(t.deterministic), use_cpu=cpu,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", tf32=False,
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_steps=total, num_train_epochs=1.0,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2, adam_epsilon=t.adam_epsilon, optim="adamw_torch",
        lr_scheduler_type="constant", warmup_steps=0,  # unused: tkc's optimizer and schedule are passed in
        max_grad_norm=t.max_grad_norm,
        # transformers' names (its `gradient_checkpointing*` aliases warn); set, so TRL's default (on) never applies
        activation_checkpointing=bool(t.gradient_checkpointing),
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="steps", logging_steps=1, logging_first_step=True, disable_tqdm=True, report_to=[],
        save_strategy="steps" if t.save_steps else "no", save_steps=t.save_steps or 1,
        save_total_limit=t.save_total_limit, save_only_model=False,
        eval_strategy="no", do_eval=False, push_to_hub=False, torch_compile=False,
        dataloader_num_workers=0, dataloader_drop_last=False, remove_unused_columns=False,
    )


def _grpo_fields(opts: ResolvedGrpoOptions, accumulation: int) -> dict[str, Any]:
    """GRPO fields: sampling and loss from the stage's options, everything else pinned off."""
    return dict(
        **{k: getattr(opts, k) for k in SAME_NAME},  # every one a ResolvedGrpoOptions field (a test)
        max_completion_length=opts.max_new_tokens,
        generation_batch_size=None, steps_per_generation=accumulation,  # one generation per optimizer step
        shuffle_dataset=True, pad_to_multiple_of=None, min_p=None,
        repetition_penalty=1.0, generation_kwargs=None, cache_implementation=None, use_vllm=False,
        use_transformers_continuous_batching=False, epsilon_high=None, delta=None,
        importance_sampling_level="token", reward_weights=None, top_entropy_quantile=1.0,
        entropy_coef=0.0, use_adaptive_entropy=False, sync_ref_model=False, disable_dropout=False,
        cast_lm_head_to_fp32=False, log_completions=False,
    )


def config_fields(stage: ResolvedStage, *, accelerator: str, trust_remote_code: bool, total: int,
                  output_dir: Path) -> dict[str, Any]:
    """GRPOConfig's keyword arguments for one resolved grpo stage (plain data: TRL validates them against the
    machine it runs on, e.g. bf16 needs a GPU, so tests read the mapping here). `accelerator`: the stage's device
    kind (stage.device): on cpu, use_cpu keeps accelerate off a GPU the machine may have."""
    t = stage.train
    return {**_trainer_fields(t, cpu=accelerator == "cpu", total=total, output_dir=output_dir),
            "trust_remote_code": trust_remote_code,
            **_grpo_fields(stage.options, t.gradient_accumulation_steps)}


def grpo_config(stage: ResolvedStage, *, accelerator: str, trust_remote_code: bool, total: int, output_dir: Path):
    """The GRPOConfig of one resolved grpo stage, run for `total` optimizer steps, checkpointing under output_dir."""
    from trl import GRPOConfig

    return GRPOConfig(**config_fields(stage, accelerator=accelerator, trust_remote_code=trust_remote_code,
                                      total=total, output_dir=output_dir))


def config_record(args) -> dict[str, Any]:
    """What outputs/<stage>/grpo_config.json keeps: every field, less the machine-specific paths."""
    return {k: v for k, v in sorted(args.to_dict().items()) if not k.startswith("_")
            and k not in ("output_dir", "logging_dir")}
