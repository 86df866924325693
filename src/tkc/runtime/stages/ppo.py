"""PPO stage (kind: ppo): policy + value head, frozen reference (adapter disabled), reward from an rm stage's model.

A deliberately thin PPO on tkc's training loop's public pieces (loop.plan_steps, batch_indices, set_lr,
restore_checkpoint, save_checkpoint, StepLog), so data order, learning-rate schedule, checkpoints and exact resume
are those of every other stage (TRL 1.16 has no PPO trainer). One step = sample responses for one global batch of
prompts, score them, then `ppo_epochs` clipped-surrogate updates on that rollout. Runs in one process (no DDP: the
compiler's rule ROLL001 refuses a launch over several); every option is the compiler's resolved value.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from tkc.bundle.plan import ResolvedPpoOptions, ResolvedStage
from tkc.bundle.plan_converter import converter
from tkc.runtime import loop, outputs, strategy
from tkc.runtime.context import EXIT_OK, EXIT_SIGTERM, RunContext
from tkc.runtime.data.tokenizer import stop_token_ids
from tkc.runtime.model import build_optimizer, build_trainable, compute_dtype, count_params
from tkc.runtime.progress import Progress
from tkc.runtime.reward_model import describe, load_reward_model
from tkc.runtime.stages.common import finish, load_rows, save_model
from tkc.runtime.stages.eval import split_prompt
from tkc.runtime.strategy import Strategy


class PolicyWithValue(nn.Module):
    """The policy LM and a scalar value head on its last hidden state (one module: one checkpoint)."""

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        return out.logits.float(), self.value_head(out.hidden_states[-1].float()).squeeze(-1)


def response_logps(logits: torch.Tensor, seqs: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """log p(response token t) for every response position (logits at t-1 predict token t)."""
    logits = logits[:, prompt_len - 1:-1]
    return torch.gather(F.log_softmax(logits, -1), 2, seqs[:, prompt_len:].unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, lam: float = 0.95) -> torch.Tensor:
    """Generalised advantage estimates, gamma = 1; values and rewards are already 0 after each response."""
    adv, running = torch.zeros_like(rewards), torch.zeros(rewards.size(0), device=rewards.device)
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros(rewards.size(0), device=rewards.device)
        running = rewards[:, t] + next_value - values[:, t] + lam * running
        adv[:, t] = running
    return adv * mask


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    std = masked_mean((x - mean) ** 2, mask).sqrt().clamp(min=1e-6)
    return (x - mean) / std * mask


@torch.no_grad()
def rollout(ctx: RunContext, strat: Strategy, model: PolicyWithValue, reference, reward_model, prompts: list[list[int]],
            opts: ResolvedPpoOptions):
    """Sample responses, then old log-probs, reference log-probs, values, per-token rewards and advantages; every
    tensor on the stage's device (strat.batch), forwards in its precision (strat.autocast)."""
    with strat.autocast():
        return _rollout(ctx, strat, model, reference, reward_model, prompts, opts)


def _rollout(ctx: RunContext, strat: Strategy, model: PolicyWithValue, reference, reward_model,
             prompts: list[list[int]], opts: ResolvedPpoOptions):
    from transformers import GenerationConfig

    tok = ctx.tokenizer()
    pad, width = tok.pad_token_id, max(map(len, prompts))
    ids = strat.batch(torch.tensor([[pad] * (width - len(p)) + p for p in prompts]))
    pmask = strat.batch(torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]))
    stops = stop_token_ids(tok, ctx.plan.template)  # the plan's stop tokens and eos
    gen = GenerationConfig(do_sample=True, temperature=opts.temperature, top_k=0, top_p=1.0,
                           max_new_tokens=opts.max_new_tokens, eos_token_id=stops,
                           pad_token_id=pad)
    model.eval()
    seqs = model.policy.generate(input_ids=ids, attention_mask=pmask, generation_config=gen)
    model.train()
    resp = seqs[:, width:]
    is_stop = torch.isin(resp, torch.tensor(stops, device=resp.device))
    after_stop = (is_stop.cumsum(1) - is_stop.long()) > 0
    rmask = (~after_stop).float()
    seqs[:, width:] = torch.where(after_stop, torch.full_like(resp, pad), resp)
    amask = torch.cat([pmask, rmask.long()], 1)
    logits, values = model(seqs, amask)
    old = response_logps(logits, seqs, width)
    ref = reference(seqs, amask, width)
    score = reward_model(input_ids=seqs, attention_mask=amask).logits.squeeze(-1).float()
    rewards = -opts.kl_coef * (old - ref) * rmask
    last = (rmask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(prompts), device=rewards.device), last] += score
    values = values[:, width - 1:-1] * rmask
    adv = gae(rewards, values, rmask)
    returns = adv + values
    adv = whiten(adv, rmask)
    return {"seqs": seqs, "amask": amask, "rmask": rmask, "width": width, "old": old, "values": values,
            "adv": adv, "returns": returns, "score": score.mean().item(), "kl": masked_mean(old - ref, rmask).item()}


def ppo_loss(model: PolicyWithValue, r: dict, clip: float) -> torch.Tensor:
    """Clipped surrogate policy loss plus half the clipped value loss, averaged over response tokens."""
    logits, values = model(r["seqs"], r["amask"])
    new = response_logps(logits, r["seqs"], r["width"])
    values = values[:, r["width"] - 1:-1]
    ratio = torch.exp(new - r["old"])
    pg = torch.max(-r["adv"] * ratio, -r["adv"] * ratio.clamp(1 - clip, 1 + clip))
    v_clipped = r["values"] + (values - r["values"]).clamp(-clip, clip)
    vf = 0.5 * torch.max((values - r["returns"]) ** 2, (v_clipped - r["returns"]) ** 2)
    return masked_mean(pg, r["rmask"]) + masked_mean(vf, r["rmask"])


def build_reference(model: PolicyWithValue, lora: bool, dtype: torch.dtype = torch.float32):
    """The frozen reference's log-probs: the policy with its adapter disabled, or a frozen copy of the placed
    policy (on its device) in `dtype` (the stage's compute dtype)."""
    frozen = None if lora else copy.deepcopy(model.policy).eval().requires_grad_(False).to(dtype)

    @torch.no_grad()
    def reference(seqs, amask, width):
        net = model.policy if lora else frozen
        with model.policy.disable_adapter() if lora else nullcontext():
            return response_logps(net(input_ids=seqs, attention_mask=amask, use_cache=False).logits.float(), seqs, width)

    return reference


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    opts, t = stage.options, stage.train
    if ctx.dist.enabled:  # the compiler gives ppo one process (ROLL001); only a launcher started by hand gets here
        raise RuntimeError(f"the ppo stage runs in one process, but this one was started with world size "
                           f"{ctx.dist.world_size}: run `tkc run` on this bundle without torchrun")
    strat = strategy.for_stage(ctx, stage)
    policy = build_trainable(ctx, stage)  # placed on the stage's device
    model = strat.place(PolicyWithValue(policy, policy.config.hidden_size))  # the fp32 value head joins it
    reference = build_reference(model, stage.finetuning.method == "lora", compute_dtype(stage))
    reward_model = strat.place(load_reward_model(ctx, opts, dtype=compute_dtype(stage)))
    optimizer = build_optimizer(model, stage)  # after placement: its state is made on the device
    strat.model, strat.optimizer = model, optimizer  # ppo steps through the strategy (fp16 loss scaling, clipping)
    rows, _ = load_rows(ctx, stage)
    prompts = [split_prompt(r)[0] for r in rows]
    per_epoch, total = loop.plan_steps(len(prompts), t)
    step, tokens, resumed = loop.restore_checkpoint(ctx, stage)
    log = loop.StepLog.open(ctx, stage, keep_through=step)
    trainable, n_params = count_params(model)
    ctx.log(f"[{stage.name}] ppo: {len(prompts)} prompts, reward from {describe(opts)}, "
            f"{trainable:,}/{n_params:,} trainable params")
    bar, t0 = Progress(stage.name, total, start=step, every=t.logging_steps), time.perf_counter()
    try:
        while step < total:
            torch.manual_seed(t.seed * 1_000_003 + step * 1_009)  # sampling is a function of the step
            batch = [prompts[i] for i in loop.batch_indices(len(prompts), t, step, per_epoch)]
            lr = loop.set_lr(optimizer, t, step, total)
            r = rollout(ctx, strat, model, reference, reward_model, batch, opts)
            for _ in range(opts.ppo_epochs):
                with strat.autocast():
                    loss = ppo_loss(model, r, opts.clip_range)
                strat.backward(loss)
                strat.step(t.max_grad_norm)
            step, tokens = step + 1, tokens + int(r["amask"].sum())
            log.add({"step": step, "loss": loss.item(), "reward": r["score"], "kl": r["kl"], "lr": lr,
                     "tokens_seen": tokens})
            bar.update(step, loss=loss.item(), lr=lr, tokens_per_s=tokens / max(1e-9, time.perf_counter() - t0))
            if ctx.stop_requested or (t.save_steps and step % t.save_steps == 0 and step < total):
                loop.save_checkpoint(ctx, stage, step, per_epoch, tokens)
            if ctx.stop_requested:
                return EXIT_SIGTERM
    finally:
        bar.close()
        log.close()
    save_model(ctx, stage, model.policy)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.value_head.state_dict().items()},
              str(ctx.stage_dir(stage) / "model" / "value_head.safetensors"))
    result = loop.LoopResult(EXIT_OK, step, total, tokens, time.perf_counter() - t0, resumed, log.records)
    rewards = [x["reward"] for x in log.records]
    # the options as resolved.json holds them; before finish: DONE seals the folder
    outputs.write_json(ctx.stage_dir(stage) / "ppo_options.json", converter.unstructure(opts))
    finish(ctx, stage, result, {"trainable_params": trainable, "reward_first": rewards[0] if rewards else None,
                                "reward_last": rewards[-1] if rewards else None})
    return EXIT_OK
