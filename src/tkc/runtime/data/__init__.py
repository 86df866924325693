"""Runtime data pipeline: resolved.json dataset entries -> canonical examples -> token ids + label masks, cached.

Entry point: `build_stage_data(resolved, stage, tokenizer, source_root, cache_dir) -> StageData` with
`.train` / `.eval` (`Rows`: a sequence of row dicts over a memory-mapped Arrow file, `.dataset` being the
`datasets.Dataset`; eval is None when val_size is 0) and `.stats` (see `build._stats`).

Rows per stage kind (all int lists; labels are -100 where not trained; no padding inside rows):
* pt:    input_ids, labels (== input_ids), attention_mask. Texts + eos concatenated, cut into cutoff_len
         chunks; the last chunk may be shorter.
* sft:   input_ids, labels, attention_mask; with data.packing also position_ids (restart at 0 per example;
         see `packing` for why collate then drops attention_mask and the model needs use_cache=False).
         Labels: the tokens whose first character lies in an assistant span of
         `tkc.bundle.chat.trained_spans` (content + end-of-turn marker; where a template writes none, the
         next message's first token when it is a stop token, or eos appended after the last turn);
         mask_history keeps the last turn only; train_on_prompt trains every token. Media columns (images/videos/audios) pass through
         as lists of absolute paths.
* kto:   input_ids, labels (last assistant turn only), attention_mask, label (1 desirable / 0 undesirable).
* rm/dpo: chosen_input_ids, chosen_labels, chosen_attention_mask, rejected_input_ids, rejected_labels,
         rejected_attention_mask: prompt + answer each, labels on the answer (and its end marker) only;
         the prompt is truncated identically on both sides.
Truncation to cutoff_len: see `truncation` (keep_response: drop whole earlier turns, then keep the prompt's start
and the answer's start; rows calling a tool whose definition was cut are dropped and counted).
`collate(batch, pad_id)` pads any of these into torch tensors.

Cache: `<cache_dir>/<key[:2]>/<key>/{train,eval}.arrow + stats.json`, key = sha256 over the data-format
version, the stage's dataset entries (with their files' sha256), data options, seed, the tokenizer's
serialized state, the template text and the renderer source. Files are re-hashed on every call and a
mismatch with the bundle is refused before the cache is consulted.
"""

from tkc.runtime.data.build import StageData, build_stage_data
from tkc.runtime.data.collate import collate
from tkc.runtime.data.errors import BadRecord, DataError
from tkc.runtime.data.packing import padding_fraction

__all__ = ["BadRecord", "DataError", "StageData", "build_stage_data", "collate", "padding_fraction"]
