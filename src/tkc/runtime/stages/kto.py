"""KTO stage (kind: kto): prospect-theoretic loss on single completions labelled desirable or undesirable."""

from __future__ import annotations

import torch

from tkc.bundle.plan import ResolvedKtoOptions, ResolvedStage
from tkc.runtime import loop
from tkc.runtime.context import RunContext
from tkc.runtime.model import build_trainable, compute_dtype
from tkc.runtime.stages.common import (
    Reference,
    make_collate,
    pieces,
    sequence_logps,
    token_count,
    train_stage,
)


def kto_loss(opts: ResolvedKtoOptions, log_ratio: torch.Tensor, desirable: torch.Tensor) -> torch.Tensor:
    """Per-example loss. The KL reference point z is this micro-batch's mean log-ratio, detached, clamped at 0."""
    beta = opts.beta
    z = log_ratio.detach().mean().clamp(min=0)
    good = opts.desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z)))
    bad = opts.undesirable_weight * (1 - torch.sigmoid(beta * (z - log_ratio)))
    return torch.where(desirable, good, bad)


def make_loss(opts: ResolvedKtoOptions, reference: Reference):
    def loss_sum(runner, batch) -> torch.Tensor:
        policy, _ = sequence_logps(runner, batch)
        ref, _ = reference(sequence_logps, batch)
        desirable = torch.cat([b["label"] for b in pieces(batch)]).bool()
        return kto_loss(opts, policy - ref, desirable).sum()  # z: over the whole micro-batch, as when padded

    return loss_sum


def build_task(ctx: RunContext, stage: ResolvedStage):
    model = build_trainable(ctx, stage)
    assert isinstance(stage.options, ResolvedKtoOptions) and stage.finetuning is not None
    reference = Reference(model, lora=stage.finetuning.method == "lora", dtype=compute_dtype(stage))
    pad_id = ctx.tokenizer().pad_token_id
    task = loop.Task(loss_sum=make_loss(stage.options, reference), units=len, tokens=token_count,
                     collate=make_collate(stage, pad_id))
    return task, model


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    task, model = build_task(ctx, stage)
    return train_stage(ctx, stage, model, task, describe=f"kto beta={stage.options.beta}")  # type: ignore[union-attr]
