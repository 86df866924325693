"""Runtime data pipeline: resolved.json dataset entries -> canonical examples -> token ids + label masks, cached.

Entry point: `build_stage_data(resolved, stage, tokenizer, source_root, cache_dir) -> StageData` with
`.train` / `.eval` (`Rows`: a sequence of row dicts over a memory-mapped Arrow file, `.dataset` being the
`datasets.Dataset`; eval is None when val_size is 0) and `.stats` (see `build._stats`).

Rows per stage kind (all int lists; labels are -100 where not trained; no padding inside rows):
* pt:    input_ids, labels (== input_ids), attention_mask. Texts + eos concatenated, cut into cutoff_len
         chunks; the last chunk may be shorter.
* sft:   input_ids, labels, attention_mask; with data.packing also position_ids (restart at 0 per example;
         see `packing` for why collate then drops attention_mask).
* kto:   input_ids, labels (last assistant turn only), attention_mask, label (1 desirable / 0 undesirable).
* rm/dpo: chosen_input_ids, chosen_labels, chosen_attention_mask, rejected_input_ids, rejected_labels,
         rejected_attention_mask: prompt + answer each, labels on the answer (and its end marker) only;
         the prompt is truncated identically on both sides.
`collate(batch, pad_id)` pads any of these into torch tensors.
"""

from tkc.runtime.data.build import StageData, build_stage_data
from tkc.runtime.data.collate import collate
from tkc.runtime.data.errors import BadRecord, DataError
from tkc.runtime.data.packing import padding_fraction

__all__ = ["BadRecord", "DataError", "StageData", "build_stage_data", "collate", "padding_fraction"]
