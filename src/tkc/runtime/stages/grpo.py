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

Every GRPO setting is read from the stage's resolved options (the compiler writes them all, schema defaults
included; never TRL's defaults, which change between releases) by the pure mapping in grpo_config.py; the full
GRPOConfig used is written to outputs/<stage>/grpo_config.json. Configuration errors (one reward source, the batch a
multiple of num_generations, beta > 0 with LoRA only, one process) are the compiler's rules GRPO001, BATCH001,
GRPO002 and ROLL001: a compiled bundle cannot reach the run with them.

Outputs: model/ (adapter or full weights, safetensors, tokenizer, template), steps.jsonl (per optimizer step:
loss, reward, reward_std, per-function reward, kl when beta > 0, lr, grad_norm, completion length,
tokens_seen), metrics.json, loss.png, run_record.json, grpo_config.json, DONE.

Checkpoints and resume: every stage's checkpoint format (tkc.runtime.checkpoint): outputs/<stage>/checkpoints/
ckpt-<step>/ with COMPLETE (each file's sha256 and size) and state.json (bundle hash, stage, step), holding the
TRL/transformers Trainer's own files (trainable weights as safetensors, optimizer.pt, scheduler.pt, rng_state.pth,
trainer_state.json), every `save_steps`, keeping `save_total_limit`; a SIGTERM writes one at the current step and
exits 143. The trainer writes each into the .tmp-ckpt-<step> staging folder that checkpoint.publish then makes
the checkpoint atomically: a crash or full disk mid-save leaves the previous checkpoint as the newest complete one,
and a corrupt newest one is set aside as ckpt-<step>.corrupt-k (never deleted) and the one before it used.
`tkc run` again resumes through `trainer.train(resume_from_checkpoint=...)`: weights, optimizer, scheduler, step, data order
(TRL's RepeatSampler is seeded) and the CPU RNG state are restored, and every step generates afresh, so a
resumed single-process CPU run reproduces the uninterrupted run's later steps — measured by
tests/runtime/test_stage_grpo.py; on CUDA, sampling kernels are not bit-deterministic, so expect close, not
identical, numbers. Checkpoints of another bundle hash are refused (exit 3). Runs in one process (no torchrun).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import torch

from tkc.bundle.plan import ResolvedGrpoOptions, ResolvedStage
from tkc.runtime import checkpoint, loop, outputs, rewards
from tkc.runtime.context import EXIT_OK, EXIT_SIGTERM, RunContext
from tkc.runtime.data.tokenizer import stop_token_ids
from tkc.runtime.model import build_optimizer, build_trainable, count_params, quiet_checkpointing_alias
from tkc.runtime.progress import Progress
from tkc.runtime.reward_model import describe, load_reward_model
from tkc.runtime.stages.common import finish, load_rows, save_model
from tkc.runtime.stages.eval import split_prompt
from tkc.runtime.stages.grpo_config import config_record, grpo_config


def _stop_ids(ctx: RunContext) -> list[int]:
    return stop_token_ids(ctx.tokenizer(), ctx.plan.template)


def prompt_items(ctx: RunContext, stage: ResolvedStage) -> list[dict]:
    """One item per sft row: prompt text (for logs and TRL), its exact token ids, and the reference answer.
    The rows are the stage's own kind's (unpacked sft rows: tkc.runtime.data.build.ROWS_KIND); the plan is read as
    written, never rewritten here."""
    train_rows, _ = load_rows(ctx, stage)
    tok = ctx.tokenizer()
    items = []
    for row in train_rows:
        prompt, ref = split_prompt(row)
        items.append({"prompt": tok.decode(prompt, skip_special_tokens=False), "prompt_ids": prompt,
                      "reference": tok.decode(ref, skip_special_tokens=True).strip()})
    return items


def rm_reward(ctx: RunContext, options: ResolvedGrpoOptions):
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


def resume_point(ctx: RunContext, stage: ResolvedStage, ckpt_root: Path) -> tuple[Path | None, int]:
    """The newest whole checkpoint of this bundle and its step, by checkpoint.py's rules (a corrupt one is set aside
    and the one before it tried; another bundle's is refused: exit 3); (None, 0) to start fresh."""
    found = checkpoint.newest_loadable(ckpt_root, lambda p: checkpoint.read_state(p, bundle_hash=ctx.bundle_hash),
                                       log=lambda msg: ctx.log(f"[{stage.name}] {msg}"))
    return (found[0], found[1]["step"]) if found else (None, 0)


def _trainer_class(ctx: RunContext, stage: ResolvedStage):
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
            """The trainer's own checkpoint files, saved as every stage's checkpoint (checkpoint.save_staged:
            ckpt-<step> with state.json, published atomically, pruned; a failed write exits 75). One process."""
            step = self.state.global_step

            def write(staging: Path) -> Path:
                self._tkc_staging = str(staging)
                try:
                    super(TkcGRPOTrainer, self)._save_checkpoint(model, trial)  # -> staging/checkpoint-<step>
                finally:
                    self._tkc_staging = None
                return staging / f"checkpoint-{step}"

            checkpoint.save_staged(Path(self.args.output_dir), step, write, keep=stage.train.save_total_limit,
                                   state={"bundle_hash": ctx.bundle_hash, "stage": stage.name, "step": step})

    return TkcGRPOTrainer


def _callback(ctx: RunContext, stage: ResolvedStage, log: loop.StepLog, bar: Progress, reward_names: list[str]):
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


def _check_one_process(ctx: RunContext) -> None:
    """The compiler gives a grpo stage one process (ROLL001); only a launcher started by hand gets here with more."""
    if ctx.dist.enabled:
        raise RuntimeError(f"the grpo stage runs in one process, but this one was started with world size "
                           f"{ctx.dist.world_size}: run `tkc run` on this bundle without torchrun")


def build_policy(ctx: RunContext, stage: ResolvedStage, stop_ids: list[int], total: int):
    """The trainable policy (generation ends at the template's stop tokens: TRL reads eos ids from the generation
    config), tkc's optimizer and tkc's learning-rate schedule."""
    policy = build_trainable(ctx, stage)
    policy.generation_config.eos_token_id = stop_ids
    policy.generation_config.pad_token_id = ctx.tokenizer().pad_token_id
    optimizer = build_optimizer(policy, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: loop.lr_factor(stage.train, s, total))
    return policy, optimizer, scheduler


def build_trainer(ctx: RunContext, stage: ResolvedStage, args, policy, optimizers, reward, items: list[dict]):
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    with quiet_checkpointing_alias():
        trainer = _trainer_class(ctx, stage)(
            model=policy, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(items),
            processing_class=ctx.tokenizer(), optimizers=optimizers,
            prompt_ids={it["prompt"]: it["prompt_ids"] for it in items},
        )
    if getattr(reward, "model", None) is not None:
        reward.model.to(trainer.accelerator.device)
    for cb in (PrinterCallback, ProgressCallback):  # tkc prints progress itself
        trainer.remove_callback(cb)
    return trainer


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    opts, t = stage.options, stage.train
    _check_one_process(ctx)
    items = prompt_items(ctx, stage)
    n, prompts_per_step = opts.num_generations, t.global_batch_size // opts.num_generations
    if len(items) < prompts_per_step:  # a fact of the data (rows left after conversion), not of the recipe
        raise RuntimeError(f"grpo: {len(items)} prompts is fewer than one step's {prompts_per_step}")
    total = t.max_steps if t.max_steps and t.max_steps > 0 else \
        max(1, math.ceil(t.epochs * len(items) / prompts_per_step))
    stop_ids = _stop_ids(ctx)
    reward_name = opts.reward_function or f"rm:{describe(opts)}"
    reward = rewards.make(opts.reward_function, max_new_tokens=opts.max_new_tokens, stop_ids=stop_ids) \
        if opts.reward_function else rm_reward(ctx, opts)
    policy, optimizer, scheduler = build_policy(ctx, stage, stop_ids, total)
    trainable, n_params = count_params(policy)

    stage_dir = ctx.stage_dir(stage)
    resume_path, resume_step = resume_point(ctx, stage, stage_dir / "checkpoints")
    # tkc's tracker (through the step log), not the Trainer's report_to: the same tags and resume rule as every stage
    log = loop.StepLog.open(ctx, stage, keep_through=resume_step)
    bar = Progress(stage.name, total, start=resume_step, every=t.logging_steps)
    args = grpo_config(stage, accelerator=stage.device, total=total,  # use_cpu on cpu stages: accelerate never guesses
                       trust_remote_code=ctx.plan.model.trust_remote_code,
                       output_dir=stage_dir / "checkpoints")
    outputs.write_json(stage_dir / "grpo_config.json", config_record(args))
    trainer = build_trainer(ctx, stage, args, policy, (optimizer, scheduler), reward, items)
    trainer.add_callback(_callback(ctx, stage, log, bar, trainer.reward_func_names))
    ctx.log(f"[{stage.name}] grpo: {len(items)} prompts x {n} generations, {prompts_per_step} prompts/step, "
            f"{total} steps, reward {reward_name}, {trainable:,}/{n_params:,} trainable"
            + (f"; resuming from {resume_path.name}" if resume_path else ""))
    t0 = time.perf_counter()
    try:
        with quiet_checkpointing_alias():
            trainer.train(resume_from_checkpoint=str(resume_path) if resume_path else None)
    finally:
        bar.close()
        log.close()
    if ctx.stop_requested:
        ctx.log(f"[{stage.name}] stop requested: checkpoint at step {trainer.state.global_step} written; "
                "run again to resume")
        return EXIT_SIGTERM
    save_model(ctx, stage, trainer.model)
    records = log.records
    result = loop.LoopResult(EXIT_OK, trainer.state.global_step, total,
                             records[-1]["tokens_seen"] if records else 0, time.perf_counter() - t0,
                             resume_step or None, records)
    rw = [r["reward"] for r in records if r.get("reward") is not None]
    finish(ctx, stage, result, {"trainable_params": trainable, "total_params": n_params, "prompts": len(items),
                                "num_generations": n, "reward": reward_name,
                                "reward_first": rw[0] if rw else None, "reward_last": rw[-1] if rw else None,
                                "reward_mean": sum(rw) / len(rw) if rw else None})
    return EXIT_OK
