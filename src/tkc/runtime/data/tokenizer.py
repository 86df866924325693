"""Load the bundle's tokenizer: a local model folder under the source root, or a hub id from the local HF cache."""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(resolved: dict, source_root: Path):
    from transformers import AutoTokenizer

    model = resolved["model"]
    if model["source"] == "local":
        return AutoTokenizer.from_pretrained(str(Path(source_root) / model["path"]))
    # never download behind the bundle's back: hub tokenizers must already be in the local cache
    return AutoTokenizer.from_pretrained(model["path"], revision=model.get("revision"), local_files_only=True)
