"""Inference stage (kind: infer): generate a reply to each chat prompt of the stage's datasets; save predictions."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from tkc.bundle.plan import ResolvedInferOptions, ResolvedStage
from tkc.runtime import outputs
from tkc.runtime.context import RunContext


def split_example(example: dict) -> tuple[list[dict], str | None]:
    """(prompt messages, reference): the conversation before its last assistant turn, and that turn's text."""
    messages = example["messages"]
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1].get("content") or ""
    return messages, None


def load_prompts(
    ctx: RunContext, stage: ResolvedStage, images: list[list[str]] | None = None
) -> list[tuple[list[dict], str | None]]:
    """(messages, reference) per record of the stage's sft datasets, verified and converted like training data;
    `images`, when given, gets each record's image paths (absolute; [] for a text record)."""
    from tkc.bundle.plan_converter import converter
    from tkc.runtime.data.convert import convert_record
    from tkc.runtime.data.errors import BadRecord, DataError
    from tkc.runtime.data.media import MediaIndex
    from tkc.runtime.data.readers import read_entry

    out = []
    for name in stage.datasets:
        dataset = ctx.plan.datasets[name]
        if dataset.kind != "sft":
            raise DataError(f"stage {stage.name!r} (infer) needs sft datasets; {name!r} is {dataset.kind!r}")
        entry = converter.unstructure(dataset)  # the readers and converter take the entry's JSON tree
        media = MediaIndex(entry, ctx.source_root) if entry.get("media_root") else None
        if media is not None:
            media.verify()  # the bundle's media files, as compiled (DataError before any generation)
        for where, record in read_entry(entry, ctx.source_root):
            try:
                example = convert_record(record, entry, (ctx.source_root / where.file).parent, media)
            except BadRecord as exc:
                if dataset.on_bad_record == "error":
                    raise exc.at(where) from None
                continue
            out.append(split_example(example))
            if images is not None:
                images.append(list(example.get("images") or ()))
    return out


def write_predictions(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    tmp.replace(path)


def write_outputs(
    ctx: RunContext,
    stage: ResolvedStage,
    pairs: list,
    completions: list,
    wall: float,
    images: list | None = None,
) -> None:
    """predictions.jsonl (prompt messages, reference, prediction; a row's image files and prompt tokens, images
    included, where it has images) and metrics.json (count, tokens/s)."""
    out = ctx.stage_dir(stage)
    assert isinstance(stage.options, ResolvedInferOptions), "an infer stage has infer options"
    records = [
        {"prompt": p, "reference": ref, "prediction": c.text, "finish_reason": c.finish_reason}
        for (p, ref), c in zip(pairs, completions, strict=True)
    ]
    for r, paths, c in zip(records, images or [], completions, strict=False):
        if paths:  # the file names relative to the source root, as the dataset names them
            r["images"] = [Path(os.path.relpath(p, ctx.source_root)).as_posix() for p in paths]
            r["prompt_tokens"] = c.prompt_tokens
    write_predictions(out / "predictions.jsonl", records)
    tokens = sum(len(c.tokens) for c in completions)
    scores = generation_metrics(ctx, stage, [(r["prediction"], r["reference"]) for r in records])
    outputs.write_json(
        out / "metrics.json",
        {
            "count": len(completions),
            "generated_tokens": tokens,
            "seconds": round(wall, 3),
            "tokens_per_second": round(tokens / max(wall, 1e-9), 2),
            "finish_reasons": dict(Counter(c.finish_reason for c in completions)),
            "model": stage.init_from or "base",
            "engine": stage.options.engine,
            **scores,
        },
    )


def generation_metrics(ctx: RunContext, stage: ResolvedStage, pairs: list[tuple[str, str | None]]) -> dict:
    """BLEU-4, ROUGE-1/2/L and exact match (runtime/metrics.py) over the rows that have a reference, printed."""
    from tkc.runtime import metrics

    scored = [(p, r) for p, r in pairs if r is not None]
    if not scored:
        return {}
    scores = metrics.generation_scores(scored, ctx.outputs / ".cache" / "jieba")
    ctx.log(f"[{stage.name}] {metrics.table(scores, len(scored))}")
    return {**scores, "scored": len(scored)}


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    from tkc.runtime.infer import load_engine
    from tkc.runtime.infer.media import media_prompts

    opts = stage.options
    assert isinstance(opts, ResolvedInferOptions)
    source = stage.init_from  # the compiler resolves it to the previous training stage, or null (base)
    images: list[list[str]] = []
    pairs = load_prompts(ctx, stage, images)
    engine = load_engine(ctx, source, engine=opts.engine)
    start = time.perf_counter()
    try:  # every prompt submitted at once: the engine batches them as its slots allow (a row with images: alone)
        completions = engine.generate(
            media_prompts(ctx, engine, [p for p, _ in pairs], images),
            max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature,
            top_p=opts.top_p,
            seed=ctx.plan.seed,
        )
    finally:
        engine.close()  # its scheduler thread lets go of the model before the next stage
    wall = time.perf_counter() - start
    tokens = sum(len(c.tokens) for c in completions)
    ctx.log(
        f"[{stage.name}] {len(completions)} predictions from {source or 'base model'} "
        f"({tokens} tokens, {tokens / max(wall, 1e-9):.1f} tok/s)"
    )
    if ctx.dist.is_main:
        write_outputs(ctx, stage, pairs, completions, wall, images)
    outputs.mark_done(ctx, stage)
    return 0
