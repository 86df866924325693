"""Supervised fine-tuning stage (kind: sft): next-token loss on the assistant tokens of chat rows."""

from __future__ import annotations

from tkc.runtime import loop
from tkc.runtime.context import RunContext
from tkc.runtime.model import build_optimizer, build_trainable, count_params
from tkc.runtime.stages.common import finish, label_units, lm_loss_sum, load_rows, pad, save_model, token_count


def run(ctx: RunContext, stage: dict) -> int:
    model = build_trainable(ctx, stage)
    optimizer = build_optimizer(model, stage)
    train_rows, eval_rows = load_rows(ctx, stage)
    pad_id = ctx.tokenizer().pad_token_id
    task = loop.Task(loss_sum=lm_loss_sum, units=label_units, tokens=token_count, collate=lambda rows: pad(rows, pad_id))
    trainable, total = count_params(model)
    ctx.log(f"[{stage['name']}] sft ({stage['finetuning']['method']}): {len(train_rows)} rows, "
            f"{trainable:,}/{total:,} trainable params")
    result = loop.train(ctx, stage, model, optimizer, task, train_rows, eval_rows)
    if result.exit_code:
        return result.exit_code
    save_model(ctx, stage, model)
    finish(ctx, stage, result, {"trainable_params": trainable, "total_params": total})
    return 0
