"""Pad a list of rows into torch tensors (right padding, labels -100, packed rows keep position_ids)."""

from __future__ import annotations

IGNORE = -100


def _pad(seqs, value: int, dtype):
    import torch

    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s) if not hasattr(s, "__array__") else s, dtype=dtype)
    return out


def collate(batch: list[dict], pad_id: int) -> dict:
    """Batch rows of any stage kind.

    * `input_ids`-like keys pad with pad_id, `*labels` with -100, `*attention_mask` with 0,
      `position_ids` with 0; scalar keys (kto `label`) become a tensor.
    * Packed rows (with `position_ids`) return no `attention_mask`: transformers then derives the
      per-example block-diagonal mask from position_ids (see `tkc.runtime.data.packing`).
    """
    import torch

    packed = "position_ids" in batch[0]
    out = {}
    for key in batch[0]:
        values = [row[key] for row in batch]
        if isinstance(values[0], (int, bool, float)):
            out[key] = torch.tensor(values)
            continue
        if packed and key == "attention_mask":
            continue
        if key in ("images", "videos", "audios"):
            out[key] = values  # paths: the model's processor loads them
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
