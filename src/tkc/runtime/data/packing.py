"""Greedy bin-packing of sft rows into cutoff_len sequences (position_ids restart per example) and padding figures.

Why position_ids and no attention_mask: transformers 5.23 (`masking_utils._preprocess_mask_arguments`) detects
packed sequences from `position_ids` (each restart at 0 opens a new sequence) only when the 2D attention_mask
is None, and then builds a block-diagonal causal mask for sdpa, eager and flex; flash-attention uses the same
position_ids to derive `cu_seqlens`. So `collate` drops attention_mask for packed batches, and padding
tokens get position 0 (each a sequence of its own, label -100) so nothing ever attends across examples.

THE TRAINING LOOP MUST CALL THE MODEL WITH `use_cache=False` on packed batches: the same function skips
packed detection when `past_key_values` is not None, and Qwen2Model (like most decoders) builds a
DynamicCache whenever use_cache is on (config default True), silently letting examples attend to each
other. tests/runtime/test_data_packing.py pins both facts.
"""

from __future__ import annotations

import bisect

import numpy as np

from tkc.runtime.data.encode import IGNORE


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: row indices per bin; deterministic (ties broken by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (space left, bin id), kept sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, b))
    return bins


def join_rows(parts: list[dict]) -> dict:
    """sft rows end to end as one: input_ids, labels (each row's first one -100), attention_mask (all ones) and
    position_ids restarting at 0 on every row; media lists joined in order."""
    labels = []
    for r in parts:
        lab = r["labels"].copy()
        lab[0] = IGNORE  # never predict an example's first token from the previous example's last one
        labels.append(lab)
    ids = np.concatenate([r["input_ids"] for r in parts])
    positions = np.concatenate([np.arange(len(r["input_ids"]), dtype=np.int32) for r in parts])
    row = {"input_ids": ids, "labels": np.concatenate(labels),
           "attention_mask": np.ones(len(ids), np.int32), "position_ids": positions}  # fmt: skip
    row.update({m: [x for r in parts for x in r[m]] for m in ("images", "videos", "audios") if m in parts[0]})
    return row


def pack_rows(rows: list[dict], capacity: int) -> list[dict]:
    """Pack sft rows; each packed row has input_ids, labels, attention_mask (all ones) and position_ids."""
    bins = plan_bins([len(r["input_ids"]) for r in rows], capacity)
    return [join_rows([rows[i] for i in members]) for members in bins]


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of pad tokens when rows are batched in order, `batch_size` at a time, each padded to its longest."""
    if not lengths:
        return 0.0
    arr = np.asarray(lengths, dtype=np.int64)
    total = 0
    for start in range(0, len(arr), batch_size):
        chunk = arr[start : start + batch_size]
        total += int(chunk.max()) * len(chunk)
    return 1.0 - float(arr.sum()) / total
