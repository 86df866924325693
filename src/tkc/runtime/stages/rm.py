"""Reward-model stage (kind: rm): a sequence-classification value head trained with the pairwise Bradley-Terry loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import loop
from tkc.runtime.context import RunContext
from tkc.runtime.model import build_trainable
from tkc.runtime.stages.common import make_collate, pair_forward, token_count, train_stage


def scores(model, input_ids, attention_mask=None) -> torch.Tensor:
    """One scalar per sequence: the head's output at the last non-pad token (transformers pools it)."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    return model(input_ids=input_ids, **kwargs, use_cache=False).logits.squeeze(-1).float()


def make_loss(pad_id: int):
    def loss_sum(runner, batch) -> torch.Tensor:
        def fn(b, prefix: str) -> torch.Tensor:
            return scores(runner, b[prefix + "input_ids"], b.get(prefix + "attention_mask"))

        chosen, rejected = pair_forward(fn, batch, pad_id)
        return -F.logsigmoid(chosen - rejected).sum()  # -log P(chosen preferred over rejected)

    return loss_sum


def build_task(ctx: RunContext, stage: ResolvedStage):
    model = build_trainable(ctx, stage, head="seq_cls")
    pad_id = ctx.tokenizer().pad_token_id
    task = loop.Task(loss_sum=make_loss(pad_id), units=len, tokens=token_count, collate=make_collate(stage, pad_id))
    return task, model


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    task, model = build_task(ctx, stage)
    return train_stage(ctx, stage, model, task, describe=f"rm ({stage.finetuning.method}, pairwise loss)")
