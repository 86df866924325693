"""Helpers every stage uses: load its rows, pad them, token losses, save the model and the stage records."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tkc.runtime import outputs
from tkc.runtime.context import RunContext
from tkc.runtime.loop import LoopResult, Rows


def load_rows(ctx: RunContext, stage: dict, *, datasets: list[str] | None = None, kind: str | None = None
              ) -> tuple[Rows, Rows]:
    """Token-id rows for the stage from tkc.runtime.data (looked up at call time so tests can substitute it)."""
    from tkc.runtime import data

    stage = {**stage, "datasets": datasets if datasets is not None else stage["datasets"], "kind": kind or stage["kind"]}
    built = data.build_stage_data(ctx.resolved, stage, ctx.tokenizer(), ctx.source_root, ctx.outputs / ".cache",
                                  template_text=ctx.chat_template(), bundle_dir=ctx.bundle_dir)
    return list(built.train), list(built.eval or [])


def pad(rows: Rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch with tkc.runtime.data.collate (labels -100; packed rows keep position_ids)."""
    from tkc.runtime.data import collate

    return collate(rows, pad_id)


def label_units(rows: Rows, key: str = "labels") -> int:
    """Number of predicted label tokens (labels are aligned with input_ids; the model predicts position t+1)."""
    return sum(sum(1 for x in r[key][1:] if x != -100) for r in rows)


def token_count(rows: Rows) -> int:
    return sum(len(v) for r in rows for k, v in r.items() if k.endswith("input_ids"))


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) after the causal shift, and the mask of positions that count."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    logps = torch.gather(F.log_softmax(logits, dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def lm_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over label tokens (the loop divides by the global label count)."""
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"]}
    for key in ("attention_mask", "position_ids"):  # packed rows carry position_ids and no attention_mask
        if key in batch:
            kwargs[key] = batch[key]
    logits = model(**kwargs, use_cache=False).logits
    logps, _ = token_logps(logits, batch["labels"])
    return -logps.sum()


def save_model(ctx: RunContext, stage: dict, model) -> None:
    """outputs/<stage>/model/: adapter or full weights (safetensors), tokenizer, chat template."""
    if not ctx.dist.is_main:
        return
    target = ctx.stage_dir(stage) / "model"
    model.save_pretrained(str(target), safe_serialization=True)
    ctx.tokenizer().save_pretrained(str(target))
    template = ctx.chat_template()
    if template is not None:
        (target / "chat_template.jinja").write_text(template, encoding="utf-8")


def finish(ctx: RunContext, stage: dict, result: LoopResult, metrics: dict[str, Any]) -> None:
    """metrics.json, loss.png, run_record.json, then DONE (last, so a crash before it reruns the stage)."""
    if ctx.dist.is_main:
        out = ctx.stage_dir(stage)
        losses = [r["loss"] for r in result.records if "loss" in r]
        metrics = {"steps": result.steps, "tokens_seen": result.tokens_seen,
                   "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
                   "eval_loss": result.eval_loss, **metrics}
        outputs.write_json(out / "metrics.json", metrics)
        outputs.plot_loss(out / "loss.png", result.records, f"{stage['name']} ({stage['kind']})")
        outputs.write_json(out / "run_record.json", outputs.run_record(
            ctx, stage, wall_s=result.wall_s, tokens_seen=result.tokens_seen, steps=result.steps,
            resumed_from=result.resumed_from))
    outputs.mark_done(ctx, stage)


def sequence_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (sum of label-token log-probs, number of label tokens)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logps, mask = token_logps(logits, labels)
    return logps.sum(-1), mask.sum(-1).clamp(min=1)


def concat_pairs(batch: dict[str, torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows in one padded batch, so a pair costs one forward pass."""
    width = max(batch["chosen_input_ids"].size(1), batch["rejected_input_ids"].size(1))

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.size(1)), value=value)

    ids = torch.cat([widen(batch["chosen_input_ids"], pad_id), widen(batch["rejected_input_ids"], pad_id)])
    mask = torch.cat([widen(batch["chosen_attention_mask"], 0), widen(batch["rejected_attention_mask"], 0)])
    labels = torch.cat([widen(batch["chosen_labels"], -100), widen(batch["rejected_labels"], -100)])
    return ids, mask, labels


class Reference:
    """The frozen reference policy: the LoRA model with its adapter disabled, or a frozen copy of the start weights."""

    def __init__(self, model, *, lora: bool):
        import copy

        self.lora = lora
        self.model = model if lora else copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, input_ids, attention_mask, labels) -> torch.Tensor:
        from contextlib import nullcontext

        with self.model.disable_adapter() if self.lora else nullcontext():
            return sequence_logps(self.model, input_ids, attention_mask, labels)[0]


def train_stage(ctx: RunContext, stage: dict, model, task, *, describe: str, extra: dict | None = None) -> int:
    """Optimizer, rows, the loop, then model + records + DONE: the tail every training stage shares."""
    from tkc.runtime import loop
    from tkc.runtime.model import build_optimizer, count_params

    optimizer = build_optimizer(model, stage)
    train_rows, eval_rows = load_rows(ctx, stage)
    trainable, total = count_params(model)
    ctx.log(f"[{stage['name']}] {describe}: {len(train_rows)} rows, {trainable:,}/{total:,} trainable params")
    result = loop.train(ctx, stage, model, optimizer, task, train_rows, eval_rows)
    if result.exit_code:
        return result.exit_code
    save_model(ctx, stage, model)
    finish(ctx, stage, result, {"trainable_params": trainable, "total_params": total, **(extra or {})})
    return 0
