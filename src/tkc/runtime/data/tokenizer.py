"""Load the bundle's tokenizer: a local model folder under the source root, or a hub id from the local HF cache."""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(resolved: dict, source_root: Path):
    """The tokenizer as `tkc run` loads it: a local folder only after it matches the bundle's recorded files
    (tkc.runtime.model_files), a hub tokenizer only from the local cache at the pinned revision (never a
    download), and trust_remote_code always passed explicitly, so transformers never asks on stdin."""
    from transformers import AutoTokenizer

    from tkc.runtime.model_files import checked_model_path, hub_kwargs

    return AutoTokenizer.from_pretrained(checked_model_path(resolved, source_root), **hub_kwargs(resolved))
