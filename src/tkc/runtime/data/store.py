"""Content-addressed cache of tokenized rows: Arrow IPC stream files (memory-mapped on load), never pickle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# Bump when the tokenized output of the same inputs changes (conversion, masking, truncation, packing).
DATA_FORMAT_VERSION = 1


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialized state (vocab, merges, normalizer, added tokens) and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = {
        k: str(getattr(tokenizer, k, None)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    return hashlib.sha256(body.encode() + canonical(specials)).hexdigest()


def cache_key(parts: dict) -> str:
    return hashlib.sha256(canonical({"data_format_version": DATA_FORMAT_VERSION, **parts})).hexdigest()


def rows_to_table(rows: list[dict], columns: list[str]):
    """Rows of numpy int arrays (or int scalars) as a pyarrow Table of list<int32> (or int64) columns."""
    import pyarrow as pa

    arrays = {}
    for col in columns:
        values = [r[col] for r in rows]
        if values and np.isscalar(values[0]):
            arrays[col] = pa.array(values, type=pa.int64())
            continue
        if col in ("images", "videos", "audios"):
            arrays[col] = pa.array(values, type=pa.list_(pa.string()))
            continue
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = np.concatenate(values).astype(np.int32) if values else np.zeros(0, np.int32)
        arrays[col] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.table(arrays)


def write_stream(table, path: Path) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=10_000)


def entry_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / key


def save(cache_dir: Path, key: str, tables: dict, stats: dict, key_parts: dict) -> Path:
    """Write split tables + stats into a temp folder and rename it into place (atomic; a racing writer loses)."""
    final = entry_dir(cache_dir, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:8]}-", dir=final.parent))
    try:
        for split, table in tables.items():
            write_stream(table, tmp / f"{split}.arrow")
        (tmp / "stats.json").write_bytes(canonical(stats) + b"\n")
        (tmp / "key.json").write_bytes(canonical(key_parts) + b"\n")
        (tmp / "COMPLETE").write_text("")
        os.replace(tmp, final)
    except OSError:
        if not (final / "COMPLETE").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class Rows(Sequence):
    """The rows of one split: a read-only sequence of dicts of int lists over a memory-mapped Arrow file.

    Iterating converts whole record batches at once (`list(rows)` is ~7x faster than iterating a
    `datasets.Dataset`, which decodes row by row); `.dataset` is the underlying `datasets.Dataset`.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, str):
            return self.dataset[index]  # a whole column
        if isinstance(index, slice):
            return self.dataset.select(range(len(self))[index]).to_list()
        return self.dataset[index]

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataset.data.table.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()

    @property
    def column_names(self) -> list[str]:
        return self.dataset.column_names

    def to_list(self) -> list[dict]:
        return self.dataset.to_list()

    def to_dict(self) -> dict:
        return self.dataset.to_dict()

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows: {', '.join(self.column_names)})"


def load(cache_dir: Path, key: str) -> tuple[dict, dict] | None:
    """({split: Rows}, stats) for a complete cache entry, else None."""
    import datasets

    where = entry_dir(cache_dir, key)
    if not (where / "COMPLETE").is_file():
        return None
    splits = {p.stem: Rows(datasets.Dataset.from_file(str(p))) for p in sorted(where.glob("*.arrow"))}
    return splits, json.loads((where / "stats.json").read_text())
