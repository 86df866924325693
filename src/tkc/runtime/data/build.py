"""`build_stage_data`: the typed plan's datasets for one stage -> verified, converted, mixed, tokenized, cached rows.

The plan comes typed (tkc.bundle.plan); each dataset entry goes to the readers and the record converter as its
JSON tree (`converter.unstructure`, the same tree as in resolved.json, so the cache keys are unchanged).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tkc.bundle.chat import RENDERER_VERSION, ChatTemplate
from tkc.bundle.kinds import STAGE_DATASET_KINDS
from tkc.bundle.plan import ResolvedPlan, ResolvedStage
from tkc.bundle.plan_converter import converter
from tkc.runtime.data import parallel, store
from tkc.runtime.data.convert import convert_record
from tkc.runtime.data.encode import Counters, EncodeOptions, encode_pairwise, encode_pt, encode_sft
from tkc.runtime.data.errors import BadRecord, DataError
from tkc.runtime.data.media import MediaIndex, MediaTokens
from tkc.runtime.data.mixing import mix, split_eval
from tkc.runtime.data.packing import pack_rows, padding_fraction
from tkc.runtime.data.readers import hub_fingerprint, read_entry, verify_files

log = logging.getLogger(__name__)

# The rows each stage kind reads: ppo and grpo take their prompts from sft rows, eval scores sft rows. Only an
# sft stage packs them (data.packing): a stage that splits rows into prompt and answer needs one example a row.
ROWS_KIND = {"pt": "pt", "sft": "sft", "rm": "rm", "dpo": "dpo", "kto": "kto", "ppo": "sft", "grpo": "sft",
             "eval": "sft"}  # fmt: skip
COLUMNS = {
    "pt": ["input_ids", "labels", "attention_mask"],
    "sft": ["input_ids", "labels", "attention_mask"],
    "kto": ["input_ids", "labels", "attention_mask", "label"],
    "rm": [f"{s}_{c}" for s in ("chosen", "rejected") for c in ("input_ids", "labels", "attention_mask")],
}
COLUMNS["dpo"] = COLUMNS["rm"]
_MAX_REASONS = 50
TRUNCATION = "keep_response"  # how every run truncates an over-long conversation (runtime.data.truncation)


@dataclass
class StageData:
    train: store.Rows  # sequence of row dicts over memory-mapped Arrow; `.dataset` is the datasets.Dataset
    eval: store.Rows | None
    stats: dict
    cache_path: Path


class _BadRecords:
    """Applies each dataset's `on_bad_record`: raise at once, or count and keep the first reasons."""

    def __init__(self, entries: list[dict]):
        self.count, self.reasons, self.per_dataset = 0, [], {}
        self.policy = {e["name"]: e["on_bad_record"] for e in entries}

    def __call__(self, exc: BadRecord) -> None:
        dataset = exc.where.dataset if exc.where else ""
        if self.policy.get(dataset, "error") != "skip":
            raise exc
        self.count += 1
        self.per_dataset[dataset] = self.per_dataset.get(dataset, 0) + 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(exc.to_json())


def _template_text(plan: ResolvedPlan, tokenizer, template_text: str | None, bundle_dir: Path | None) -> str:
    if template_text is not None:
        return template_text
    tpl = plan.template
    if bundle_dir is not None and tpl is not None and (Path(bundle_dir) / tpl.file).is_file():
        return (Path(bundle_dir) / tpl.file).read_text(encoding="utf-8")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise DataError(
        "this stage renders conversations but no chat template was given (bundle template/ or tokenizer)"
    )


def _chat_template(plan: ResolvedPlan, tokenizer, template_text, bundle_dir) -> ChatTemplate:
    text = _template_text(plan, tokenizer, template_text, bundle_dir)
    return ChatTemplate.from_plan(plan.template, text, tokenizer_eos=tokenizer.eos_token or "")


def _inside_read_roots(plan: ResolvedPlan, entry: dict, source_root: Path) -> None:
    from tkc.runtime.model_files import PathOutsideRoots, check_inside_roots

    for f in entry["files"]:
        try:
            check_inside_roots(source_root / f["path"], plan.read_roots, source_root,
                               f"dataset {entry['name']!r} file")  # fmt: skip
        except PathOutsideRoots as exc:
            raise DataError(str(exc)) from None


def _key_parts(plan: ResolvedPlan, stage: ResolvedStage, entries, tokenizer, chat: ChatTemplate | None,
               source_root: Path, truncation: str) -> dict:
    media = any(e["columns"][m] for e in entries for m in ("images", "videos", "audios"))
    data = converter.unstructure(plan.data)  # the plan's data options, as in resolved.json
    if truncation != TRUNCATION:  # not a plan field: only the tests choose another rule
        data["truncation"] = truncation
    return {
        "stage_kind": stage.kind,
        "datasets": entries,
        # hub datasets have no hashed files: key on the content fingerprint of the locally cached copy
        "hub": {e["name"]: hub_fingerprint(e, source_root) for e in entries if e["file_type"] == "hub"},
        # the batch size changes memory use, not rows: it stays out of the key
        "data": data,
        "seed": plan.seed,
        "tokenizer": store.tokenizer_fingerprint(tokenizer),
        "template": None if chat is None else [chat.text, chat.bos_token, chat.eos_token, dict(chat.render_kwargs),
                                               list(chat.stop_tokens)]  # stop tokens close turns (trained_spans)
        + ([chat.now] if chat.now is not None else []),  # the instant a clock-reading template renders at
        "renderer": RENDERER_VERSION,
        # media paths are stored resolved, so they are only valid for this source root
        "source_root": str(Path(source_root).resolve()) if media else None,
    } | ({"processor": {f: plan.model.files.get(f) for f in _PROCESSOR_FILES}} if media else {})  # fmt: skip


_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")   # image token counts depend on them


def _media_tokens(plan: ResolvedPlan, entries: list[dict], source_root: Path) -> MediaTokens | None:
    """The placeholder expander when a dataset of this stage has media and the model takes it (MM001 otherwise)."""
    mm, limits = plan.model.multimodal, plan.data.media
    if mm is None or limits is None or not any(e.get("media_root") for e in entries):
        return None
    from tkc.runtime.model_files import checked_model_path

    return MediaTokens(checked_model_path(plan, source_root), mm, limits.max_image_bytes, limits.max_image_pixels)


def _base_dir(entry: dict, where_file: str, source_root: Path) -> Path:
    if entry["file_type"] == "hub":
        return source_root
    if entry["file_type"] == "hf_disk":
        return source_root / entry["path"]
    return (source_root / where_file).parent


def _convert(entry: dict, raw: list, source_root: Path, bad: _BadRecords, tokens: MediaTokens | None = None) -> list:
    """[(where, canonical example)] of one dataset's raw records, placeholders expanded; bad ones go to `bad`."""
    out = []
    media = MediaIndex(entry, source_root) if entry.get("media_root") else None
    for where, record in raw:
        try:
            example = convert_record(record, entry, _base_dir(entry, where.file, source_root), media)
            out.append((where, tokens.expand(example) if tokens is not None else example))
        except BadRecord as exc:
            bad(exc.at(where))
    return out


def _start_workers(kind: str, n_records: int, tokenizer, chat, opts, workers) -> parallel.Workers | None:
    """Worker processes for a dataset this large (None: tokenize in this process)."""
    if kind == "pt":
        return None
    workers = parallel.auto_workers(n_records) if workers is None else workers
    if workers > 1 and parallel.can_parallelize(tokenizer, chat):
        return parallel.Workers(tokenizer, chat, opts, workers)
    return None


def _encode(
    kind: str, items: list, tokenizer, chat, opts: EncodeOptions, bad, counters, batch: int, pool
) -> list[dict]:
    """Tokenize in batches of `preprocessing_batch_size` (bounds the memory held by tokenizer Encodings)."""
    if kind == "pt":
        if tokenizer.eos_token_id is None:
            raise DataError("pretraining appends eos after each text, but the tokenizer has no eos token")
        return encode_pt(items, tokenizer, opts, tokenizer.eos_token_id, batch)
    if pool is not None and len(items) > batch:
        return pool.encode(kind, items, bad, counters, batch)
    rows: list[dict] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        if kind in ("rm", "dpo"):
            rows += encode_pairwise(chunk, tokenizer, chat, opts, bad, counters)
        else:
            rows += encode_sft(chunk, tokenizer, chat, opts, bad, counters, kto=kind == "kto")
    return rows


def _lengths(rows: list[dict], kind: str) -> list[int]:
    key = "chosen_input_ids" if kind in ("rm", "dpo") else "input_ids"
    return [len(r[key]) for r in rows]


def _token_counts(rows: list[dict], kind: str) -> dict:
    prefixes = ("chosen_", "rejected_") if kind in ("rm", "dpo") else ("",)
    total = sum(len(r[f"{p}input_ids"]) for r in rows for p in prefixes)
    trained = sum(int((r[f"{p}labels"][1:] != -100).sum()) for r in rows for p in prefixes)
    return {"total": total, "trained": trained}


def _check_stage(plan: ResolvedPlan, stage: ResolvedStage) -> list[dict]:
    """The stage's dataset entries as JSON trees (what the readers and converter take), each of the kind it needs."""
    kind = stage.kind
    if kind not in ROWS_KIND:
        raise DataError(f"stage {stage.name!r}: kind {kind!r} has no tokenized training data in tkc.runtime.data")
    (wanted,) = STAGE_DATASET_KINDS[kind]
    for name in stage.datasets:
        if plan.datasets[name].kind != wanted:
            raise DataError(f"stage {stage.name!r} ({kind}) needs {wanted} datasets; "
                            f"{name!r} is {plan.datasets[name].kind!r}")  # fmt: skip
    return [converter.unstructure(plan.datasets[name]) for name in stage.datasets]


def build_stage_data(
    plan: ResolvedPlan,
    stage: ResolvedStage,
    tokenizer,
    source_root: Path,
    cache_dir: Path,
    *,
    template_text: str | None = None,
    bundle_dir: Path | None = None,
    workers: int | None = None,
    batch_size: int = 1000,
    truncation: str = TRUNCATION,
) -> StageData:
    """Tokenized train/eval rows for one stage, from the cache when every input is unchanged.

    The chat template text comes from `template_text`, else `bundle_dir/<plan.template.file>`, else
    the tokenizer's own `chat_template`.
    `workers`: processes that render and tokenize (None: one per 5000 examples, up to min(8, CPUs)), and
    `batch_size`: examples tokenized at once (bounds the memory held by tokenizer Encodings); the rows depend on
    neither, so neither is part of the cache key. `truncation`: the rule for over-long conversations; the plan
    has no such field (every run keeps the response), the tests choose the others.
    """
    entries = _check_stage(plan, stage)
    source_root = Path(source_root)
    for e in entries:
        _inside_read_roots(plan, e, source_root)  # the compiler's rule (read_roots), at the given source root
        verify_files(e, source_root)  # refuse changed data before trusting a cache keyed on recorded hashes
        if e.get("media_root"):
            MediaIndex(e, source_root).verify()
    chat = None if stage.kind == "pt" else _chat_template(plan, tokenizer, template_text, bundle_dir)
    parts = _key_parts(plan, stage, entries, tokenizer, chat, source_root, truncation)
    key = store.cache_key(parts)
    hit = store.load(cache_dir, key)
    if hit is not None:
        splits, stats = hit
        return StageData(
            splits["train"], splits.get("eval"), {**stats, "cache_hit": True}, store.entry_dir(cache_dir, key)
        )
    # The build allocates millions of short-lived objects and frees no cycles; a full collection over the
    # heap of an interpreter with torch/transformers/datasets loaded costs ~0.1 s each time it triggers.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        tables, stats = _build(plan, stage, entries, tokenizer, chat, source_root, (workers, batch_size, truncation))
    finally:
        if gc_was_on:
            gc.enable()
    stats["key"] = key
    path = store.save(cache_dir, key, tables, stats, parts)
    splits, stats = store.load(cache_dir, key)
    return StageData(splits["train"], splits.get("eval"), {**stats, "cache_hit": False}, path)


def _build(plan: ResolvedPlan, stage: ResolvedStage, entries, tokenizer, chat, source_root,
           knobs: tuple[int | None, int, str]) -> tuple[dict, dict]:
    start = time.perf_counter()
    workers, batch, truncation = knobs
    batch = max(1, batch)
    kind, data, seed = ROWS_KIND[stage.kind], plan.data, plan.seed
    packed = data.packing and stage.kind == "sft"
    bad, per_dataset = _BadRecords(entries), {}
    media = tuple(
        m
        for m in ("images", "videos", "audios")
        if kind in ("sft", "kto", "dpo") and any(e["columns"][m] for e in entries)
    )
    opts = EncodeOptions(data.cutoff_len, data.train_on_prompt, data.mask_history, truncation, media)
    counters = Counters()
    raws = [read_entry(e, source_root, verify=False) for e in entries]
    tokens = _media_tokens(plan, entries, source_root)
    pool = _start_workers(kind, sum(map(len, raws)), tokenizer, chat, opts, workers)
    try:
        parts = []
        for e, raw in zip(entries, raws, strict=True):
            parts.append(_convert(e, raw, source_root, bad, tokens))
            per_dataset[e["name"]] = {"records": len(raw), "converted": len(parts[-1])}
        del raws
        mixed = mix(parts, [e["weight"] for e in entries], data.mix, seed)
        train_items, eval_items = split_eval(mixed, data.val_size, seed)
        train = _encode(kind, train_items, tokenizer, chat, opts, bad, counters, batch, pool)
        evals = _encode(kind, eval_items, tokenizer, chat, opts, bad, counters, batch, pool)
    finally:
        if pool is not None:
            pool.close()
    stats = _stats(stage, per_dataset, bad, counters, train, evals, len(train_items), len(eval_items))
    if packed:
        train, evals = pack_rows(train, data.cutoff_len), pack_rows(evals, data.cutoff_len)
        stats["padding_fraction"]["packed"] = padding_fraction(
            _lengths(train, kind), stats["padding_fraction"]["batch_size"]
        )
    stats["rows"] = {"train": len(train), "eval": len(evals)}
    if not train:
        raise DataError(_nothing_to_train(stage, stats))
    stats["seconds"] = round(time.perf_counter() - start, 4)
    stats["examples_per_second"] = round(
        (len(train_items) + len(eval_items)) / max(stats["seconds"], 1e-9), 1
    )
    columns = (
        COLUMNS[kind] + (["position_ids"] if packed else []) + list(media)
    )
    tables = {"train": store.rows_to_table(train, columns)}
    if evals or eval_items:
        tables["eval"] = store.rows_to_table(evals, columns)
    if bad.count:
        log.warning("skipped %d bad records (first: %s)", bad.count, bad.reasons[0])
    return tables, stats


def _nothing_to_train(stage: ResolvedStage, stats: dict) -> str:
    # a silent empty dataset would "train" zero steps; say why nothing is left instead
    first = stats["skipped"]["reasons"][:1]
    why = f"; first skipped: {first[0]['file']}:{first[0]['line']}: {first[0]['message']}" if first else ""
    return (f"stage {stage.name!r}: no training rows left ({stats['examples']['train']} examples, "
            f"{stats['skipped']['count']} skipped, {stats['dropped_no_labels']} with nothing to train "
            f"after truncation to cutoff_len, {stats['dropped_tool_defs']} calling a tool whose definition was "
            f"cut){why}")  # fmt: skip


def _stats(stage, per_dataset, bad, counters, train, evals, n_train, n_eval) -> dict:
    kind = ROWS_KIND[stage.kind]
    for name, n in bad.per_dataset.items():
        per_dataset[name]["skipped"] = n
    batch = stage.train.micro_batch_size if stage.train is not None else 1  # eval: rows scored one by one
    lengths = _lengths(train, kind)
    return {
        "stage": stage.name, "kind": stage.kind, "datasets": per_dataset,
        "skipped": {"count": bad.count, "reasons": bad.reasons},
        "examples": {"train": n_train, "eval": n_eval},
        "truncated": counters.truncated, "dropped_no_labels": counters.dropped_no_labels,
        "dropped_tool_defs": counters.dropped_tool_defs, "cuts": counters.cuts,
        "tokens": _token_counts(train, kind),
        "length": {"max": max(lengths, default=0), "mean": float(np.mean(lengths)) if lengths else 0.0},
        "padding_fraction": {"batch_size": batch, "unpacked": padding_fraction(lengths, batch), "packed": None},
    }  # fmt: skip
