"""The one tokenizer loader (`tkc run`, `tkc data inspect`, `tkc chat`) and the one stop-token rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tkc.bundle.chat import plan_stop_tokens
from tkc.bundle.plan import ResolvedPlan


def load_tokenizer(plan: ResolvedPlan, source_root: Path, *, model_path: str | None = None,
                   chat_template: str | None = None):  # fmt: skip
    """The tokenizer as every command loads it: a local folder only after it matches the bundle's recorded files
    (tkc.runtime.model_files; `model_path` when the caller has already checked it), a hub tokenizer only from
    the local cache at the pinned revision (never a download), and trust_remote_code always passed explicitly,
    so transformers never asks on stdin.

    A tokenizer without a pad token pads with its eos token. The pad token is part of the data cache key, so
    `tkc data inspect` and `tkc run` must load the tokenizer alike to share cached rows. `chat_template`, the
    bundle's template text, replaces the one shipped beside the weights.
    """
    from transformers import AutoTokenizer

    from tkc.runtime.model_files import checked_model_path, hub_kwargs

    path = model_path if model_path is not None else checked_model_path(plan, source_root)
    tok = AutoTokenizer.from_pretrained(path, **hub_kwargs(plan.model))
    if chat_template is not None:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(tokenizer, template: Any) -> list[int]:
    """Token ids generation stops at: the plan's stop tokens (`plan_stop_tokens`) and the tokenizer's eos, in
    that order, without repeats; a stop token the vocabulary lacks (None or the unknown token) is left out."""
    ids = [tokenizer.convert_tokens_to_ids(s) for s in plan_stop_tokens(template)] + [tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None and i != tokenizer.unk_token_id))
