"""Supervised fine-tuning stage (kind: sft): next-token loss on the assistant tokens of chat rows."""

from __future__ import annotations

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import loop
from tkc.runtime.attention import enable as enable_varlen
from tkc.runtime.context import RunContext
from tkc.runtime.model import build_trainable
from tkc.runtime.multimodal import stage_media
from tkc.runtime.stages.common import label_units, lm_loss_sum, make_collate, token_count, train_stage


def build_task(ctx: RunContext, stage: ResolvedStage):
    model = build_trainable(ctx, stage)
    pad_id = ctx.tokenizer().pad_token_id
    # unpadded rows run end to end in one forward where the model takes varlen attention; not with NEFTune,
    # whose noise scale depends on the sequence length
    train = stage.train
    assert train is not None
    packed = train.padding == "unpadded" and train.neftune_alpha is None and enable_varlen(model)
    moe = ctx.plan.model.moe
    loss_sum = lm_loss_sum
    if moe is not None and moe.aux_loss_coef > 0:  # the router's load-balancing loss, as transformers adds it
        from tkc.runtime.moe import moe_loss_sum

        loss_sum = moe_loss_sum(moe.aux_loss_coef)
    task = loop.Task(loss_sum=loss_sum, units=label_units, tokens=token_count,
                     collate=make_collate(stage, pad_id, packed=packed, media=stage_media(ctx)))
    return task, model


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    task, model = build_task(ctx, stage)
    return train_stage(ctx, stage, model, task, describe=f"sft ({stage.finetuning.method})")
