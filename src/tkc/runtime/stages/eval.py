"""Evaluation stage (kind: eval): greedy generation on held-out chat rows, exact-match accuracy printed and saved."""

from __future__ import annotations

import json

import torch

from tkc.runtime import outputs
from tkc.runtime.context import RunContext
from tkc.runtime.model import load_stage_output, start_weights
from tkc.runtime.stages.common import load_rows


def split_prompt(row: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids): the prompt ends where the first trained label starts."""
    labels = row["labels"]
    first = next(i for i, x in enumerate(labels) if x != -100)
    return list(row["input_ids"][:first]), [x for x in labels[first:] if x != -100]


def model_under_test(ctx: RunContext, stage: dict):
    """The init_from stage's model (adapter merged), else the latest earlier stage with a model, else the base."""
    name = stage.get("init_from")
    if not name:
        earlier = [s for s in ctx.resolved["stages"][: stage["index"]] if (ctx.stage_dir(s) / "model").is_dir()]
        name = earlier[-1]["name"] if earlier else None
    model = load_stage_output(ctx, name) if name else start_weights(ctx, stage, dtype=torch.float32)
    return model.eval(), name


@torch.no_grad()
def greedy(model, tok, prompts: list[list[int]], max_new: int, stop_ids: list[int], batch: int = 32) -> list[list[int]]:
    """Greedy continuations of left-padded prompt batches, cut at the first stop token."""
    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new, eos_token_id=stop_ids,
                           pad_token_id=tok.pad_token_id, num_beams=1)
    outs: list[list[int]] = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        new = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, width:].tolist()
        for seq in new:
            cut = next((j for j, t in enumerate(seq) if t in stop_ids), len(seq))
            outs.append(seq[:cut])
    return outs


def run(ctx: RunContext, stage: dict) -> int:
    opts = stage.get("options") or {}
    tok = ctx.tokenizer()
    train_rows, eval_rows = load_rows(ctx, stage, datasets=opts.get("datasets") or stage["datasets"], kind="sft")
    rows = train_rows + eval_rows
    model, source = model_under_test(ctx, stage)
    stops = (ctx.resolved.get("template") or {}).get("stop_tokens") or [tok.eos_token]
    stop_ids = [tok.convert_tokens_to_ids(s) for s in stops] + [tok.eos_token_id]
    pairs = [split_prompt(r) for r in rows]
    preds = greedy(model, tok, [p for p, _ in pairs], int(opts.get("max_new_tokens", 16)), stop_ids)
    records, correct = [], 0
    for (prompt, ref), pred in zip(pairs, preds, strict=True):
        ref_text = tok.decode(ref, skip_special_tokens=True).strip()
        pred_text = tok.decode(pred, skip_special_tokens=True).strip()
        correct += ref_text == pred_text
        records.append({"prompt": tok.decode(prompt), "reference": ref_text, "prediction": pred_text})
    acc = correct / max(1, len(records))
    ctx.log(f"[{stage['name']}] exact_match {acc:.1%} ({correct}/{len(records)}) on {source or 'base model'}")
    if ctx.dist.is_main:
        out = ctx.stage_dir(stage)
        out.mkdir(parents=True, exist_ok=True)
        outputs.write_json(out / "metrics.json", {"exact_match": acc, "correct": correct, "total": len(records),
                                                  "model": source or "base"})
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    outputs.mark_done(ctx, stage)
    return 0
