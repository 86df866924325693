"""GRPO stage (kind: grpo): Group Relative Policy Optimization with TRL's GRPOTrainer.

Policy: the init_from stage's output (adapter merged) or the bundle's model, plus the stage's fine-tuning
method, built by tkc.runtime.model.build_trainable (so LoRA / freeze / full and the seeded LoRA init are the
same as in every other stage); the optimizer is tkc's build_optimizer (LoRA+ groups, no decay on vectors) and
the learning-rate schedule is tkc's loop.lr_factor, handed to the trainer instead of its own.

Prompts: the stage's sft datasets through tkc.runtime.data (bundle template, system prompts, truncation,
max_samples), cut at the first trained label like the eval/ppo stages. The trainer is given those exact
prompt token ids (its own re-tokenisation is bypassed), so generation starts from the same ids the sft stage
trained on. The reference answer (decoded as the eval stage decodes it) is the `reference` column.

Rewards: `reward_function: <id>` (tkc.runtime.rewards: exact_match, format, length_penalty) or
`reward_model: <rm stage | path/to/bundle[:stage]>` (tkc.runtime.reward_model): that rm stage's model scores prompt ids + completion ids
(stop token included) at the last non-pad token, exactly as the ppo stage scores its rollouts.

Batch geometry: one optimizer step consumes `global_batch_size` completions = global_batch_size /
num_generations prompts, `micro_batch_size` completions per forward, generated once per step
(steps_per_generation = gradient_accumulation_steps). global_batch_size must be a multiple of num_generations.

GRPO settings that the stage spec does not carry yet are read from `options` when present, else the constants
in DEFAULTS below (never TRL's defaults, which change between releases); the full GRPOConfig used is written to
outputs/<stage>/grpo_config.json.

Outputs: model/ (adapter or full weights, safetensors, tokenizer, template), steps.jsonl (per optimizer step:
loss, reward, reward_std, per-function reward, kl when beta > 0, lr, grad_norm, completion length,
tokens_seen), metrics.json, loss.png, run_record.json, grpo_config.json, DONE.

Checkpoints and resume: checkpoints are TRL/transformers Trainer checkpoints,
outputs/<stage>/checkpoints/checkpoint-<step>/ (trainable weights as safetensors, optimizer.pt, scheduler.pt,
rng_state.pth, trainer_state.json), every `save_steps`, keeping `save_total_limit`; a SIGTERM writes one at the
current step and exits 143. The trainer writes each into a .tmp- folder that tkc then publishes atomically like
its own (tkc.runtime.checkpoint.publish: fsync, COMPLETE marker, rename): a crash or full disk mid-save leaves
the previous checkpoint as the newest complete one. tkc resumes from the newest checkpoint with COMPLETE and
deletes the rest (half-written ones). `tkc run` again
resumes through `trainer.train(resume_from_checkpoint=...)`: weights, optimizer, scheduler, step, data order
(TRL's RepeatSampler is seeded) and the CPU RNG state are restored, and every step generates afresh, so a
resumed single-process CPU run reproduces the uninterrupted run's later steps — measured by
tests/runtime/test_stage_grpo.py; on CUDA, sampling kernels are not bit-deterministic, so expect close, not
identical, numbers. Checkpoints of another bundle hash are refused (exit 3). Runs in one process (no torchrun).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from tkc.runtime import loop, outputs, rewards
from tkc.runtime.checkpoint import publish
from tkc.runtime.context import EXIT_OK, EXIT_SIGTERM, BundleChanged, RunContext
from tkc.runtime.model import build_optimizer, build_trainable, count_params, quiet_checkpointing_alias
from tkc.runtime.progress import Progress
from tkc.runtime.reward_model import describe, load_reward_model
from tkc.runtime.stages.common import finish, load_rows, save_model
from tkc.runtime.stages.eval import split_prompt

# GRPO settings not (yet) in the stage spec: explicit here so a TRL upgrade cannot change them silently.
DEFAULTS = {
    "temperature": 1.0,  # sampling temperature (also divides the logits in the loss, as TRL does)
    "top_p": 1.0,
    "top_k": 0,  # 0 = off
    "beta": 0.0,  # KL coefficient to the start policy; 0 = no reference model (TRL >= 0.19 default, DAPO)
    "epsilon": 0.2,  # clip range of the importance ratio
    "num_iterations": 1,  # updates per generated batch
    "loss_type": "dapo",  # token-level loss normalised by active tokens of the global batch (no length bias)
    "scale_rewards": "group",  # advantages divided by the std of their prompt group
    "mask_truncated_completions": False,
}
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _options(stage: dict) -> dict:
    opts = stage.get("options") or {}
    return {**DEFAULTS, **{k: opts[k] for k in DEFAULTS if opts.get(k) is not None}}


def _stop_ids(ctx: RunContext) -> list[int]:
    tok = ctx.tokenizer()
    stops = (ctx.resolved.get("template") or {}).get("stop_tokens") or []
    ids = [tok.convert_tokens_to_ids(s) for s in stops] + [tok.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None and i != tok.unk_token_id))


def prompt_items(ctx: RunContext, stage: dict) -> list[dict]:
    """One item per sft row: prompt text (for logs and TRL), its exact token ids, and the reference answer."""
    data = ctx.resolved.get("data") or {}
    if data.get("packing"):  # packed rows hold several examples: read them unpacked
        ctx = replace(ctx, resolved={**ctx.resolved, "data": {**data, "packing": False}})
    train_rows, _ = load_rows(ctx, stage, kind="sft")
    tok = ctx.tokenizer()
    items = []
    for row in train_rows:
        prompt, ref = split_prompt(row)
        items.append({"prompt": tok.decode(prompt, skip_special_tokens=False), "prompt_ids": prompt,
                      "reference": tok.decode(ref, skip_special_tokens=True).strip()})
    return items


def rm_reward(ctx: RunContext, options: dict):
    """A reward function scoring prompt + completion ids with an rm stage's sequence-classification model
    (of this bundle, or of the reward bundle the compiler pinned in options.reward_bundle)."""
    model = load_reward_model(ctx, options)
    name = describe(options)
    pad_id = ctx.tokenizer().pad_token_id

    @torch.no_grad()
    def reward(prompts, completions, completion_ids, prompt_ids, **_) -> list[float]:
        seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        width = max(map(len, seqs))
        device = next(model.parameters()).device
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float().tolist()

    reward.__name__ = "rm_" + re.sub(r"\W+", "_", name).strip("_")
    reward.model = model
    return reward


def _check_bundle_hash(ctx: RunContext, ckpt_root: Path) -> None:
    owner = ckpt_root / "BUNDLE"
    if owner.exists() and owner.read_text(encoding="utf-8").strip() != ctx.bundle_hash:
        raise BundleChanged(f"{ckpt_root} holds checkpoints of bundle {owner.read_text().strip()[:12]}, not "
                            f"{ctx.bundle_hash[:12]}; delete it to run the stage again")
    ckpt_root.mkdir(parents=True, exist_ok=True)
    owner.write_text(ctx.bundle_hash + "\n", encoding="utf-8")


def last_complete_checkpoint(ckpt_root: Path) -> tuple[Path | None, int]:
    """Newest published checkpoint-<step> (it has COMPLETE); unpublished .tmp- folders are removed."""
    if not ckpt_root.is_dir():
        return None, 0
    for stale in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    found = sorted(((int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _CKPT.match(p.name))), reverse=True)
    for step, path in found:
        if (path / "COMPLETE").exists():
            return path, step
        shutil.rmtree(path, ignore_errors=True)
    return None, 0


def _prune(ckpt_root: Path, keep: int | None) -> None:
    """Keep the newest `keep` published checkpoints (None or <= 0: all)."""
    found = sorted((int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _CKPT.match(p.name)))
    for _, path in found[: -keep] if keep and keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def grpo_config(ctx: RunContext, stage: dict, total: int, opts: dict):
    """GRPOConfig with every field that matters set from the bundle or DEFAULTS (TRL's defaults differ: bf16 on,
    gradient checkpointing on, lr 1e-6, logging every 10 steps, reporting to every installed tracker)."""
    from trl import GRPOConfig

    t, hw = stage["train"], ctx.resolved.get("hardware") or {}
    precision = t["precision"]
    return GRPOConfig(
        output_dir=str(ctx.stage_dir(stage) / "checkpoints"),
        seed=t["seed"], data_seed=t["seed"], full_determinism=bool(t.get("deterministic")),
        use_cpu=hw.get("accelerator", "cpu") == "cpu",
        bf16=precision == "bf16", fp16=precision == "fp16", tf32=False,
        per_device_train_batch_size=t["micro_batch_size"], gradient_accumulation_steps=t["gradient_accumulation_steps"],
        max_steps=total, num_train_epochs=1.0,
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"], adam_beta1=t["adam_beta1"],
        adam_beta2=t["adam_beta2"], adam_epsilon=t["adam_epsilon"], optim="adamw_torch",
        lr_scheduler_type="constant", warmup_steps=0,  # unused: tkc's optimizer and schedule are passed in
        max_grad_norm=float(t["max_grad_norm"] or 0.0),
        # transformers' names (its `gradient_checkpointing*` aliases warn); set, so TRL's default (on) never applies
        activation_checkpointing=bool(t.get("gradient_checkpointing")),
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="steps", logging_steps=1, logging_first_step=True, disable_tqdm=True, report_to=[],
        save_strategy="steps" if t["save_steps"] else "no", save_steps=t["save_steps"] or 1,
        save_total_limit=t["save_total_limit"], save_only_model=False,
        eval_strategy="no", do_eval=False, push_to_hub=False, torch_compile=False,
        dataloader_num_workers=0, dataloader_drop_last=False, remove_unused_columns=False,
        trust_remote_code=bool(ctx.resolved["model"].get("trust_remote_code")),
        # GRPO
        num_generations=opts["num_generations"], max_completion_length=opts["max_new_tokens"],
        generation_batch_size=None, steps_per_generation=t["gradient_accumulation_steps"],
        shuffle_dataset=True, pad_to_multiple_of=None,
        temperature=opts["temperature"], top_p=opts["top_p"], top_k=opts["top_k"], min_p=None,
        repetition_penalty=1.0, generation_kwargs=None, cache_implementation=None, use_vllm=False,
        use_transformers_continuous_batching=False,
        beta=opts["beta"], num_iterations=opts["num_iterations"], epsilon=opts["epsilon"], epsilon_high=None,
        delta=None, loss_type=opts["loss_type"], scale_rewards=opts["scale_rewards"],
        importance_sampling_level="token", reward_weights=None,
        mask_truncated_completions=opts["mask_truncated_completions"], top_entropy_quantile=1.0,
        entropy_coef=0.0, use_adaptive_entropy=False, sync_ref_model=False, disable_dropout=False,
        cast_lm_head_to_fp32=False, log_completions=False,
    )


def _trainer_class():
    from trl import GRPOTrainer

    class TkcGRPOTrainer(GRPOTrainer):
        """GRPOTrainer fed tkc's prompt token ids (the data pipeline's) instead of re-tokenising prompt text."""

        def __init__(self, *args, prompt_ids: dict[str, list[int]], **kwargs):
            self._tkc_prompt_ids = prompt_ids
            super().__init__(*args, **kwargs)

        def _tokenize_prompts(self, prompts: list):
            return [list(self._tkc_prompt_ids[p]) for p in prompts], None, {}

        _tkc_staging: str | None = None

        def _get_output_dir(self, trial):
            return self._tkc_staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial) -> None:
            """The trainer's own checkpoint, written into a .tmp- folder, then published atomically."""
            root, name = Path(self.args.output_dir), f"checkpoint-{self.state.global_step}"
            staging = root / f".tmp-{name}"
            shutil.rmtree(staging, ignore_errors=True)
            self._tkc_staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)  # -> staging/checkpoint-<step>
            finally:
                self._tkc_staging = None
            if self.args.should_save:
                publish(staging / name, root / name, self.state.global_step)
                shutil.rmtree(staging, ignore_errors=True)
                _prune(root, self.args.save_total_limit)

    return TkcGRPOTrainer


def _callback(ctx: RunContext, stage: dict, log: loop.StepLog, bar: Progress, reward_names: list[str]):
    from transformers import TrainerCallback

    class TkcCallback(TrainerCallback):
        """steps.jsonl + progress per optimizer step; SIGTERM -> checkpoint at this step and stop."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs or state.global_step <= (log.records[-1]["step"] if log.records else 0):
                return
            rec = {"step": state.global_step, "loss": float(logs["loss"]), "reward": logs.get("reward"),
                   "reward_std": logs.get("reward_std"), "lr": logs.get("learning_rate"),
                   "grad_norm": logs.get("grad_norm"), "completion_length": logs.get("completions/mean_length"),
                   "frac_reward_zero_std": logs.get("frac_reward_zero_std"), "entropy": logs.get("entropy"),
                   "tokens_seen": int(logs.get("num_tokens") or state.num_input_tokens_seen or 0)}
            for name in reward_names:
                rec[f"reward/{name}"] = logs.get(f"rewards/{name}/mean")
            if "kl" in logs:
                rec["kl"] = logs["kl"]
            log.add({k: (float(v) if isinstance(v, (int, float)) and k not in ("step", "tokens_seen") else v)
                     for k, v in rec.items()})
            elapsed = max(1e-9, time.perf_counter() - bar.t0)
            bar.update(state.global_step, loss=rec["loss"], lr=rec["lr"] or 0.0,
                       tokens_per_s=rec["tokens_seen"] / elapsed)

        def on_step_end(self, args, state, control, **kwargs):
            if ctx.stop_requested:
                control.should_save = True
                control.should_training_stop = True
            return control

    return TkcCallback()


def run(ctx: RunContext, stage: dict) -> int:
    from datasets import Dataset

    opts, t = _options(stage), stage["train"]
    opts["num_generations"], opts["max_new_tokens"] = stage["options"]["num_generations"], stage["options"]["max_new_tokens"]
    if ctx.dist.enabled:
        raise RuntimeError("the grpo stage runs in one process; launch it without torchrun")
    reward_model, reward_function = stage["options"].get("reward_model"), stage["options"].get("reward_function")
    if bool(reward_model) == bool(reward_function):
        raise RuntimeError(f"grpo stage {stage['name']!r}: give exactly one of reward_model (an rm stage) or "
                           f"reward_function ({', '.join(rewards.NAMES)})")
    g, n = t["global_batch_size"], opts["num_generations"]
    if g % n or g != t["micro_batch_size"] * t["gradient_accumulation_steps"] * ctx.dist.world_size:
        raise RuntimeError(f"grpo: global_batch_size {g} must be micro_batch_size x gradient_accumulation_steps "
                           f"(x world size) and a multiple of num_generations {n} (completions per prompt)")
    if opts["beta"] and stage["finetuning"]["method"] != "lora":
        raise RuntimeError("grpo: beta > 0 (a KL reference) is supported with LoRA only (the reference is the "
                           "policy with its adapter reset); TRL would rebuild a full reference from the hub id")

    stage_dir, tok = ctx.stage_dir(stage), ctx.tokenizer()
    items = prompt_items(ctx, stage)
    prompts_per_step = g // n
    total = t["max_steps"] if t["max_steps"] and t["max_steps"] > 0 else \
        max(1, math.ceil(t["epochs"] * len(items) / prompts_per_step))
    if len(items) < prompts_per_step:
        raise RuntimeError(f"grpo: {len(items)} prompts is fewer than one step's {prompts_per_step}")

    stop_ids = _stop_ids(ctx)
    if reward_function:
        reward = rewards.make(reward_function, max_new_tokens=opts["max_new_tokens"], stop_ids=stop_ids)
    else:
        reward = rm_reward(ctx, stage["options"])

    policy = build_trainable(ctx, stage)
    # completions end at the template's stop tokens (TRL reads eos ids from the generation config)
    policy.generation_config.eos_token_id = stop_ids
    policy.generation_config.pad_token_id = tok.pad_token_id
    optimizer = build_optimizer(policy, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: loop.lr_factor(t, s, total))
    trainable, n_params = count_params(policy)

    ckpt_root = stage_dir / "checkpoints"
    _check_bundle_hash(ctx, ckpt_root)
    resume_path, resume_step = last_complete_checkpoint(ckpt_root)
    # tkc's tracker (through the step log), not the Trainer's report_to: the same tags and resume rule as every stage
    log = loop.StepLog.open(ctx, stage, keep_through=resume_step)
    bar = Progress(stage["name"], total, start=resume_step, every=t["logging_steps"])
    args = grpo_config(ctx, stage, total, opts)
    outputs.write_json(stage_dir / "grpo_config.json",
                       {k: v for k, v in sorted(args.to_dict().items()) if not k.startswith("_")
                        and k not in ("output_dir", "logging_dir")})
    with quiet_checkpointing_alias():
        trainer = _trainer_class()(
            model=policy, reward_funcs=[reward], args=args,
            train_dataset=Dataset.from_list(items), processing_class=tok,
            optimizers=(optimizer, scheduler), prompt_ids={it["prompt"]: it["prompt_ids"] for it in items},
        )
    if getattr(reward, "model", None) is not None:
        reward.model.to(trainer.accelerator.device)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):  # tkc prints progress itself
        trainer.remove_callback(cb)
    trainer.add_callback(_callback(ctx, stage, log, bar, trainer.reward_func_names))
    ctx.log(f"[{stage['name']}] grpo: {len(items)} prompts x {n} generations, {prompts_per_step} prompts/step, "
            f"{total} steps, reward {reward_function or 'rm:' + describe(stage['options'])}, {trainable:,}/{n_params:,} trainable"
            + (f"; resuming from {resume_path.name}" if resume_path else ""))
    t0 = time.perf_counter()
    try:
        with quiet_checkpointing_alias():
            trainer.train(resume_from_checkpoint=str(resume_path) if resume_path else None)
    finally:
        bar.close()
        log.close()
    if ctx.stop_requested:
        ctx.log(f"[{stage['name']}] stop requested: checkpoint at step {trainer.state.global_step} written; "
                "run again to resume")
        return EXIT_SIGTERM
    model = trainer.model
    save_model(ctx, stage, model)
    records = log.records
    result = loop.LoopResult(EXIT_OK, trainer.state.global_step, total,
                             records[-1]["tokens_seen"] if records else 0, time.perf_counter() - t0,
                             resume_step or None, records)
    rw = [r["reward"] for r in records if r.get("reward") is not None]
    finish(ctx, stage, result, {"trainable_params": trainable, "total_params": n_params, "prompts": len(items),
                                "num_generations": n, "reward": reward_function or f"rm:{describe(stage['options'])}",
                                "reward_first": rw[0] if rw else None, "reward_last": rw[-1] if rw else None,
                                "reward_mean": sum(rw) / len(rw) if rw else None})
    return EXIT_OK
