"""Inference stage (kind: infer): generate answers for a dataset's prompts with the previous stage's model (engine hf)."""

from __future__ import annotations

import json

import torch

from tkc.runtime import outputs
from tkc.runtime.context import RunContext
from tkc.runtime.stages.common import load_rows
from tkc.runtime.stages.eval import model_under_test, split_prompt


@torch.no_grad()
def generate(model, tok, prompts: list[list[int]], opts: dict, stop_ids: list[int], batch: int = 16) -> list[list[int]]:
    """Greedy when temperature is 0, else seeded sampling; left-padded batches, cut at the first stop token."""
    from transformers import GenerationConfig

    temperature = float(opts.get("temperature", 0.0))
    gen = GenerationConfig(do_sample=temperature > 0, temperature=temperature or None, top_k=0, top_p=1.0,
                           max_new_tokens=int(opts.get("max_new_tokens", 128)), eos_token_id=stop_ids,
                           pad_token_id=tok.pad_token_id, num_beams=1)
    outs: list[list[int]] = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        for seq in model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, width:].tolist():
            outs.append(seq[:next((j for j, t in enumerate(seq) if t in stop_ids), len(seq))])
    return outs


def run(ctx: RunContext, stage: dict) -> int:
    opts = stage.get("options") or {}
    if opts.get("engine", "hf") != "hf":
        raise RuntimeError(f"infer engine {opts['engine']!r} is not available in this runtime; use engine: hf")
    tok = ctx.tokenizer()
    train_rows, eval_rows = load_rows(ctx, stage, kind="sft")
    model, source = model_under_test(ctx, stage)
    stops = (ctx.resolved.get("template") or {}).get("stop_tokens") or [tok.eos_token]
    stop_ids = [tok.convert_tokens_to_ids(s) for s in stops] + [tok.eos_token_id]
    prompts = [split_prompt(r)[0] for r in train_rows + eval_rows]
    torch.manual_seed(ctx.resolved["seed"])
    answers = generate(model, tok, prompts, opts, stop_ids)
    if ctx.dist.is_main:
        out = ctx.stage_dir(stage)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
            for p, a in zip(prompts, answers, strict=True):
                f.write(json.dumps({"prompt": tok.decode(p), "response": tok.decode(a, skip_special_tokens=True)},
                                   ensure_ascii=False) + "\n")
        outputs.write_json(out / "metrics.json", {"n": len(answers), "model": source or "base"})
        ctx.log(f"[{stage['name']}] wrote {len(answers)} responses from {source or 'the base model'} to {out}")
    outputs.mark_done(ctx, stage)
    return 0
