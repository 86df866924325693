"""Chat templates in the catalog: the `.jinja` + `.yaml` data files and their registry.

The renderer itself (`render`, `assistant_spans`) lives below both compiler and runtime in `tkc.bundle.chat`;
it is re-exported here for the catalog's callers.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

import yaml

from tkc.bundle.chat import (
    Span,
    SpanError,
    TemplateRefused,
    assistant_spans,
    has_generation_markers,
    render,
)

__all__ = ["Span", "SpanError", "TemplateRefused", "assistant_spans", "has_generation_markers",
           "list_templates", "load_template", "render"]  # fmt: skip

TEMPLATES_DIR = Path(__file__).parent / "templates"
_ID_RE = re.compile(r"^[a-z0-9_]+$")


def list_templates() -> list[str]:
    """Ids of the catalog's templates, checking that every `.jinja` has its `.yaml` and vice versa."""
    return sorted(_registry())


def load_template(template_id: str) -> tuple[str, dict]:
    """The template text and its metadata (`<id>.yaml`)."""
    ids = _registry()
    if template_id not in ids:
        close = difflib.get_close_matches(template_id, sorted(ids), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown chat template {template_id!r}{hint}")
    text = (TEMPLATES_DIR / f"{template_id}.jinja").read_bytes().decode("utf-8")  # verbatim: CRLF kept
    meta = yaml.safe_load((TEMPLATES_DIR / f"{template_id}.yaml").read_text(encoding="utf-8"))
    return text, meta


@lru_cache(maxsize=1)
def _registry() -> frozenset[str]:
    jinja = {p.stem for p in TEMPLATES_DIR.glob("*.jinja")}
    meta = {p.stem for p in TEMPLATES_DIR.glob("*.yaml")}
    if jinja != meta:
        raise ValueError(
            f"templates without a pair: .jinja only {sorted(jinja - meta)}, .yaml only {sorted(meta - jinja)}"
        )
    bad = sorted(i for i in jinja if not _ID_RE.match(i))
    if bad:
        raise ValueError(f"template ids must match [a-z0-9_]+: {bad}")
    return frozenset(jinja)
