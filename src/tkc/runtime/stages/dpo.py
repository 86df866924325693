"""Preference stage (kind: dpo): DPO sigmoid / IPO / hinge against a frozen reference, or reference-free ORPO / SimPO."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tkc.bundle.plan import ResolvedDpoOptions, ResolvedStage
from tkc.runtime import attention, loop
from tkc.runtime.context import RunContext
from tkc.runtime.model import build_trainable, compute_dtype
from tkc.runtime.multimodal import stage_media
from tkc.runtime.stages.common import Reference, make_collate, pair_logps, token_count, train_stage

REFERENCE_LOSSES = {"sigmoid", "ipo", "hinge"}


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-6)))


def preference_loss(opts: ResolvedDpoOptions, pol: tuple, ref: tuple | None, counts: tuple) -> torch.Tensor:
    """Per-pair losses. pol/ref = (chosen, rejected) summed log-probs; counts = their label-token counts."""
    beta, (pc, pr), (nc, nr) = opts.beta, pol, counts
    kind = opts.loss
    if kind in REFERENCE_LOSSES:
        rc, rr = ref
        if kind == "ipo":  # IPO regresses the length-normalised log-ratio gap onto 1/(2 beta)
            gap = (pc / nc - pr / nr) - (rc / nc - rr / nr)
            return (gap - 1.0 / (2.0 * beta)) ** 2
        margin = beta * ((pc - pr) - (rc - rr))
        if kind == "hinge":
            return F.relu(1.0 - margin)
        ls = opts.label_smoothing
        return -(1.0 - ls) * F.logsigmoid(margin) - ls * F.logsigmoid(-margin)
    ac, ar = pc / nc, pr / nr  # average per-token log-probs
    if kind == "orpo":  # NLL on chosen plus beta * odds-ratio term
        log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
        return -ac - beta * F.logsigmoid(log_odds)
    if kind == "simpo":  # length-normalised margin with target reward margin gamma
        return -F.logsigmoid(beta * (ac - ar) - opts.simpo_gamma)
    raise ValueError(f"unknown dpo loss {kind!r}")


def make_loss(opts: ResolvedDpoOptions, reference: Reference | None, pad_id: int, share_prompt: bool = False):
    def loss_sum(runner, batch) -> torch.Tensor:
        pc, pr, nc, nr = pair_logps(runner, batch, pad_id, share_prompt=share_prompt)
        ref = reference(pair_logps, batch, pad_id, share_prompt=share_prompt)[:2] if reference is not None else None
        losses = preference_loss(opts, (pc, pr), ref, (nc, nr))
        if opts.ftx:  # auxiliary SFT loss on the chosen response
            losses = losses + opts.ftx * (-pc / nc)
        return losses.sum()

    return loss_sum


def build_task(ctx: RunContext, stage: ResolvedStage):
    opts, train = stage.options, stage.train
    assert isinstance(opts, ResolvedDpoOptions) and train is not None and stage.finetuning is not None
    model = build_trainable(ctx, stage)
    # unpadded pairs run their shared prompt once (not with gradient checkpointing, which turns the cache off)
    # (nor with images: the prompt's forward would need its pixels, the continuation the multimodal positions)
    share = train.padding == "unpadded" and not train.gradient_checkpointing and ctx.plan.model.multimodal is None
    if share and not train.neftune_alpha:  # NEFTune's noise scale depends on sequence length
        attention.enable(model)  # a micro-batch's prompts, then its continuations, as one forward each
    needs_ref = opts.loss in REFERENCE_LOSSES
    reference = Reference(model, lora=stage.finetuning.method == "lora", dtype=compute_dtype(stage)) if needs_ref \
        else None
    pad_id = ctx.tokenizer().pad_token_id
    task = loop.Task(loss_sum=make_loss(opts, reference, pad_id, share), units=len, tokens=token_count,
                     collate=make_collate(stage, pad_id, media=stage_media(ctx)))
    return task, model


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    task, model = build_task(ctx, stage)
    opts = stage.options
    assert isinstance(opts, ResolvedDpoOptions)
    return train_stage(ctx, stage, model, task, describe=f"dpo loss={opts.loss} beta={opts.beta}",
                       extra={"loss": opts.loss})
