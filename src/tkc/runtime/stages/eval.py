"""Evaluation stage (kind: eval): the stage's `metric` on its rows, printed and saved to metrics.json.

exact_match: greedy generation from each row's prompt, compared with its reference after decoding.
loss: mean negative log-likelihood per trained token (the tokens a training stage would score, labels != -100),
summed over all rows' tokens and divided by their count; perplexity: exp(loss)."""

from __future__ import annotations

import json
import math

import torch

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import outputs
from tkc.runtime.context import RunContext
from tkc.runtime.data.tokenizer import stop_token_ids
from tkc.runtime.device import stage_device, to_device
from tkc.runtime.model import load_stage_output, start_weights
from tkc.runtime.stages.common import load_rows, pad


def split_prompt(row: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids): the prompt ends where the first trained label starts."""
    labels = row["labels"]
    first = next(i for i, x in enumerate(labels) if x != -100)
    return list(row["input_ids"][:first]), [x for x in labels[first:] if x != -100]


def model_under_test(ctx: RunContext, stage: ResolvedStage):
    """The init_from stage's model (adapter merged), else the latest earlier stage with a model, else the base."""
    name = stage.init_from
    if not name:
        earlier = [s for s in ctx.plan.stages[: stage.index] if (ctx.stage_dir(s) / "model").is_dir()]
        name = earlier[-1].name if earlier else None
    model = load_stage_output(ctx, name) if name else start_weights(ctx, stage, dtype=torch.float32)
    return model.to(stage_device(ctx.plan, stage, ctx.dist)).eval(), name


def greedy(model, tok, prompts: list[list[int]], max_new: int, stop_ids: list[int], batch: int = 32) -> list[list[int]]:
    """Greedy continuations cut at the first stop token, through the batching engine `tkc chat` and infer use."""
    from tkc.runtime.infer.batching import BatchingEngine
    from tkc.runtime.infer.engine import SamplingParams, TokenIds
    from tkc.runtime.infer.hf import HFEngine

    engine = BatchingEngine(HFEngine(model, tok), max_batch=batch)
    params = SamplingParams(max_new_tokens=max_new, stop_token_ids=tuple(stop_ids))
    try:
        handles = [engine.submit(TokenIds(tuple(p)), params, bounded=False) for p in prompts]
        return [h.result()[0].tokens for h in handles]
    finally:
        engine.close()


@torch.no_grad()
def token_nll(model, rows: list[dict], pad_id: int, batch: int = 16) -> tuple[float, int]:
    """(summed NLL in nats, token count) over every trained token of `rows`: token t is scored by the logits at
    t-1, as in training. Right-padded batches; padding and prompt tokens (label -100) are not counted."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        b = to_device(pad(rows[i:i + batch], pad_id), next(model.parameters()).device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum")
        total += float(nll.double())
        count += int((labels != -100).sum())
    return total, count


def score_exact_match(ctx: RunContext, stage: ResolvedStage, model, rows: list[dict]) -> tuple[dict, list[dict]]:
    tok, opts = ctx.tokenizer(), stage.options
    stop_ids = stop_token_ids(tok, ctx.plan.template)
    pairs = [split_prompt(r) for r in rows]
    preds = greedy(model, tok, [p for p, _ in pairs], int(opts.max_new_tokens), stop_ids)
    records, correct = [], 0
    for (prompt, ref), pred in zip(pairs, preds, strict=True):
        ref_text = tok.decode(ref, skip_special_tokens=True).strip()
        pred_text = tok.decode(pred, skip_special_tokens=True).strip()
        correct += ref_text == pred_text
        records.append({"prompt": tok.decode(prompt), "reference": ref_text, "prediction": pred_text})
    acc = correct / max(1, len(records))
    return {"exact_match": acc, "correct": correct, "total": len(records)}, records


def score_loss(ctx: RunContext, model, rows: list[dict]) -> dict:
    total, count = token_nll(model, rows, ctx.tokenizer().pad_token_id)
    if not count:
        raise RuntimeError("eval: the rows have no trained tokens to score (every label is masked)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "total": len(rows)}


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    opts = stage.options
    metric = opts.metric
    if opts.benchmark is not None:  # mmlu | cmmlu | ceval: multiple-choice accuracy on the benchmark files
        from tkc.runtime.stages import eval_mc

        eval_mc.run(ctx, stage, *model_under_test(ctx, stage))
        outputs.mark_done(ctx, stage)
        return 0
    train_rows, eval_rows = load_rows(ctx, stage, datasets=stage.datasets)
    rows = train_rows + eval_rows
    model, source = model_under_test(ctx, stage)
    records: list[dict] | None = None
    if metric == "exact_match":
        scores, records = score_exact_match(ctx, stage, model, rows)
        said = f"exact_match {scores['exact_match']:.1%} ({scores['correct']}/{scores['total']})"
    else:
        scores = score_loss(ctx, model, rows)
        said = f"{metric} {scores[metric]:.4f} (loss {scores['loss']:.4f} over {scores['tokens']} tokens)"
    ctx.log(f"[{stage.name}] {said} on {source or 'base model'}")
    if ctx.dist.is_main:
        out = ctx.stage_dir(stage)
        out.mkdir(parents=True, exist_ok=True)
        extra = {} if metric == "exact_match" else {"metric": metric}
        outputs.write_json(out / "metrics.json", {**scores, **extra, "model": source or "base"})
        if records is not None:
            with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    outputs.mark_done(ctx, stage)
    return 0
