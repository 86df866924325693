"""KTO stage (kind: kto): prospect-theoretic loss on single completions labelled desirable or undesirable."""

from __future__ import annotations

import torch

from tkc.runtime import loop
from tkc.runtime.context import RunContext
from tkc.runtime.model import build_optimizer, build_trainable, count_params
from tkc.runtime.stages.common import Reference, finish, load_rows, pad, save_model, sequence_logps, token_count


def kto_loss(opts: dict, log_ratio: torch.Tensor, desirable: torch.Tensor) -> torch.Tensor:
    """Per-example loss. The KL reference point z is this micro-batch's mean log-ratio, detached, clamped at 0."""
    beta = opts["beta"]
    z = log_ratio.detach().mean().clamp(min=0)
    good = opts["desirable_weight"] * (1 - torch.sigmoid(beta * (log_ratio - z)))
    bad = opts["undesirable_weight"] * (1 - torch.sigmoid(beta * (z - log_ratio)))
    return torch.where(desirable, good, bad)


def make_loss(opts: dict, reference: Reference):
    def loss_sum(runner, batch) -> torch.Tensor:
        args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
        policy, _ = sequence_logps(runner, *args)
        return kto_loss(opts, policy - reference.logps(*args), batch["label"].bool()).sum()

    return loss_sum


def run(ctx: RunContext, stage: dict) -> int:
    opts = stage["options"]
    model = build_trainable(ctx, stage)
    reference = Reference(model, lora=stage["finetuning"]["method"] == "lora")
    optimizer = build_optimizer(model, stage)
    train_rows, eval_rows = load_rows(ctx, stage)
    pad_id = ctx.tokenizer().pad_token_id
    task = loop.Task(loss_sum=make_loss(opts, reference), units=len, tokens=token_count,
                     collate=lambda rows: pad(rows, pad_id))
    trainable, total = count_params(model)
    good = sum(bool(r["label"]) for r in train_rows)
    ctx.log(f"[{stage['name']}] kto beta={opts['beta']}: {good} desirable / {len(train_rows) - good} undesirable, "
            f"{trainable:,}/{total:,} trainable params")
    result = loop.train(ctx, stage, model, optimizer, task, train_rows, eval_rows)
    if result.exit_code:
        return result.exit_code
    save_model(ctx, stage, model)
    finish(ctx, stage, result, {"trainable_params": trainable, "total_params": total})
    return 0
