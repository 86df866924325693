"""Canonical JSON and sha256: the byte form every hashed bundle file takes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any


def _check(obj: Any, path: str = "$") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite float at {path}: canonical JSON has no NaN/Infinity")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"non-string key {k!r} at {path}")
            _check(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check(v, f"{path}[{i}]")


def canonical_json(obj: Any) -> str:
    """Sorted keys, fixed separators, UTF-8 text, no NaN: equal values give equal bytes."""
    _check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(obj: Any) -> bytes:
    return canonical_json(obj).encode("utf-8")


def pretty_json_bytes(obj: Any) -> bytes:
    """Readable yet deterministic JSON for files a person reviews (sorted keys, 2-space indent, newline)."""
    _check(obj)
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
