"""Content-addressed cache of tokenized rows: Arrow IPC stream files (memory-mapped on load), never pickle.

An entry's COMPLETE marker records each file's size and sha256; `load` checks them (and the row counts) and sets a
damaged entry aside (`<key>.corrupt-<k>`) so the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tkc.bundle.canonical import sha256_file
from tkc.bundle.io import set_aside

log = logging.getLogger(__name__)

# Bump when the tokenized output of the same inputs changes (conversion, masking, truncation, packing).
DATA_FORMAT_VERSION = 2  # 2: keep_response truncation keeps the prompt's start (runtime/data/truncation.py)


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


def _numpy_array(values: np.ndarray):
    """A pyarrow array over a numpy buffer (zero-copy); `pa.array` would import pandas (~0.4 s) to check types."""
    import pyarrow as pa

    kind = {np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64()}[values.dtype]
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(np.ascontiguousarray(values))])


def rows_to_table(rows: list[dict], columns: list[str]):
    """Rows of numpy int arrays (or int scalars, or media path lists) as a pyarrow Table."""
    import pyarrow as pa

    arrays = []
    for col in columns:
        values = [r[col] for r in rows]
        if values and np.isscalar(values[0]):
            arrays.append(_numpy_array(np.asarray(values, dtype=np.int64)))
        elif col in ("images", "videos", "audios"):
            arrays.append(pa.array(values, type=pa.list_(pa.string())))
        else:
            lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat = np.concatenate(values).astype(np.int32) if values else np.zeros(0, np.int32)
            arrays.append(pa.ListArray.from_arrays(_numpy_array(offsets), _numpy_array(flat)))
    return pa.Table.from_arrays(arrays, names=columns)


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
        (tmp / "COMPLETE").write_bytes(canonical({"files": _file_records(tmp)}) + b"\n")
        os.replace(tmp, final)
    except OSError:
        if not (final / "COMPLETE").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class Rows(Sequence):
    """The rows of one split: a read-only sequence of dicts of int lists over a memory-mapped Arrow file.

    Backed by pyarrow alone (importing `datasets` costs ~0.5 s); whole record batches convert at once, so
    `list(rows)` is ~8x faster than iterating a `datasets.Dataset`. `.dataset` builds one on demand.
    """

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = Path(path)
        with pa.memory_map(str(self.path)) as source:
            self.table = pa.ipc.open_stream(source).read_all()  # zero-copy views into the mapping

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, str):
            return self.table.column(index).to_pylist()  # a whole column
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self.table.slice(start, max(0, stop - start)).to_pylist()
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for {n} rows")
        return self.table.slice(index % n, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[dict]:
        for batch in self.table.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()

    @property
    def column_names(self) -> list[str]:
        return self.table.column_names

    @property
    def dataset(self):
        """The same rows as a `datasets.Dataset` (memory-mapped from the same file)."""
        import datasets

        return datasets.Dataset.from_file(str(self.path))

    def to_list(self) -> list[dict]:
        return self.table.to_pylist()

    def to_dict(self) -> dict:
        return self.table.to_pydict()

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows: {', '.join(self.column_names)})"


def _file_records(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != "COMPLETE":
            out[p.name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


def check_entry(where: Path) -> str | None:
    """What is wrong with a COMPLETE entry's files against its record (None: nothing). Entries written before the
    record (an empty COMPLETE) are checked by their row counts only (in `load`)."""
    text = (where / "COMPLETE").read_text()
    if not text.strip():
        return None
    want = json.loads(text)["files"]
    have = _file_records(where)
    for name in sorted(want):
        if name not in have:
            return f"{name} is missing"
        if have[name] != want[name]:
            return f"{name} is not what was written ({have[name]['size']} bytes, {want[name]['size']} written)"
    return None


def _open(where: Path) -> tuple[dict, dict]:
    """({split: Rows}, stats) of an entry that passed check_entry; ValueError when its row counts disagree."""
    splits = {p.stem: Rows(p) for p in sorted(where.glob("*.arrow"))}
    stats = json.loads((where / "stats.json").read_text())
    for split, n in (stats.get("rows") or {}).items():
        if n and (split not in splits or len(splits[split]) != n):
            raise ValueError(f"{split}.arrow holds {len(splits[split]) if split in splits else 0} rows, not {n}")
    return splits, stats


def load(cache_dir: Path, key: str) -> tuple[dict, dict] | None:
    """({split: Rows}, stats) for a complete, undamaged cache entry, else None (a damaged one is set aside)."""
    import pyarrow as pa

    where = entry_dir(cache_dir, key)
    if not (where / "COMPLETE").is_file():
        return None
    try:
        problem = check_entry(where)
        if problem is None:
            return _open(where)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        problem = f"unreadable: {e}"
    # Derived data, rebuilt from the verified inputs; still kept aside rather than deleted (tkc deletes nothing it
    # cannot prove is its own garbage), so a failing disk or a tool that truncated it can be looked at.
    try:
        aside = set_aside(where, "corrupt")
    except FileNotFoundError:  # another rank or process set it aside first
        return None
    log.warning("data cache entry %s is damaged (%s): kept as %s; rebuilding it", where, problem, aside.name)
    return None
