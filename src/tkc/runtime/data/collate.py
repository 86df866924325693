"""Rows into torch tensors: right-padded to the longest row, or unpadded (runs of equal-length rows, or every row
end to end in one packed sequence; no padding). Rows with images (a vision-language model's) bring their pixels:
`media` (tkc.runtime.multimodal.media_encoder) turns a batch's image paths into the processor's tensors, all the
batch's images in row order, as the model's forward fills its image tokens in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MEDIA_KEYS = ("images", "videos", "audios")

IGNORE = -100


def _pad(seqs, value: int, dtype):
    import torch

    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s) if not hasattr(s, "__array__") else s, dtype=dtype)
    return out


def collate(batch: list[dict], pad_id: int, media: Callable[..., dict] | None = None) -> dict:
    """Batch rows of any stage kind.

    * `input_ids`-like keys pad with pad_id, `*labels` with -100, `*attention_mask` with 0,
      `position_ids` with 0; scalar keys (kto `label`) become a tensor.
    * Packed rows (with `position_ids`) return no `attention_mask`: transformers then derives the
      per-example block-diagonal mask from position_ids (see `tkc.runtime.data.packing`).
    * Media path lists: with `media`, the images become its tensors (pixel_values, image_grid_thw), the audios
      theirs (input_features, feature_attention_mask) and the paths are dropped; without it they stay lists of
      paths (rows of a text stage never have them: MM001).
    """
    import torch

    packed = "position_ids" in batch[0]
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [row[key] for row in batch]
        if isinstance(values[0], (int, bool, float)):
            out[key] = torch.tensor(values)
            continue
        if packed and key == "attention_mask":
            continue
        if key in MEDIA_KEYS:
            if media is None:
                out[key] = values
            elif key in ("images", "audios"):
                out.update(media(values, kind=key))
            continue
        pad = (
            IGNORE
            if key.endswith("labels")
            else 0
            if key.endswith(("attention_mask", "position_ids"))
            else pad_id
        )
        out[key] = _pad(values, pad, torch.long)
    return out


def _lengths(row: dict) -> tuple[int, ...]:
    return tuple(len(v) for k, v in row.items() if k.endswith("input_ids"))


def collate_unpadded(batch: list[dict], pad_id: int, media: Callable[..., dict] | None = None) -> list[dict]:
    """A micro-batch as pieces that need no padding: each run of consecutive rows of equal length(s) is one
    `collate` batch (usually one row), in row order.

    The pieces carry no `attention_mask` (every token is real), so sdpa takes its causal fast path; packed
    rows keep their `position_ids`, from which transformers builds the per-example mask as before.
    """
    runs: list[list[dict]] = []
    for row in batch:
        if runs and _lengths(runs[-1][-1]) == _lengths(row):
            runs[-1].append(row)
        else:
            runs.append([row])
    pieces = [collate(run, pad_id, media) for run in runs]
    # the token masks go; an audio's feature_attention_mask (which frames are real) is a model input
    return [{k: v for k, v in p.items() if k == "feature_attention_mask" or not k.endswith("attention_mask")}
            for p in pieces]


PACKABLE = {"input_ids", "labels", "attention_mask"}


def collate_packed(batch: list[dict], pad_id: int, media: Callable[..., dict] | None = None) -> list[dict]:
    """A micro-batch of token rows as one piece: the rows end to end in one sequence, positions restarting at 0 on
    each, `cu_seq_lens` marking where each starts (for tkc.runtime.attention's varlen path).

    The rows are joined as sequence packing joins them (packing.join_rows): each row's first label becomes -100 (a
    row's first token is never a target of its own row, so the last token of the row before it predicts nothing). Rows with other columns (images, already-packed rows with
    their own position_ids, pair or KTO columns) go to collate_unpadded instead.
    """
    import torch

    from tkc.runtime.data.packing import join_rows

    if not batch or "labels" not in batch[0] or any(set(r) - PACKABLE for r in batch):
        return collate_unpadded(batch, pad_id, media)
    row = join_rows(batch)
    cu = torch.tensor([0] + [len(r["input_ids"]) for r in batch], dtype=torch.long).cumsum(0)
    return [{**{k: torch.as_tensor(row[k], dtype=torch.long)[None] for k in ("input_ids", "labels", "position_ids")},
             "cu_seq_lens": cu}]
