"""Catalog data: the config.json shape fields of known hub models (model_shapes.yaml), for the compile-time estimate."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tkc.catalog.registry import _LOADER, CATALOG_DIR
from tkc.schema.diagnostics import CompileError, Diagnostic

SHAPES_FILE = CATALOG_DIR / "model_shapes.yaml"


class ModelShapeRecord(BaseModel):
    """The config.json fields the estimate reads, as the vendor's config spells them."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False


@cache
def model_shapes() -> dict[str, dict[str, Any]]:
    """hub id -> config-like mapping (None fields left out); a bad record is a CAT002 error."""
    raw = yaml.load(SHAPES_FILE.read_text(encoding="utf-8"), Loader=_LOADER) or {}
    out: dict[str, dict[str, Any]] = {}
    for hub_id, record in raw.items():
        try:
            out[str(hub_id)] = ModelShapeRecord.model_validate(record).model_dump(exclude_none=True)
        except ValidationError as exc:
            raise CompileError([Diagnostic("CAT002", f"invalid model shape {hub_id!r}: {exc}", "",
                                           str(SHAPES_FILE))]) from None
    return out
