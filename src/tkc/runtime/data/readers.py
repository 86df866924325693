"""Read a resolved dataset entry's raw records (with their file:line) after checking every file's sha256."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from tkc.bundle.canonical import sha256_file
from tkc.bundle.hub_cache import hub_cache_dir
from tkc.dataio import FILE_TYPES, BadJson, iter_file
from tkc.runtime.data.errors import BadRecord, DataError, Where

_BY_LINE = {"jsonl", "csv", "txt"}
_SPLIT_RE = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def verify_files(entry: dict, source_root: Path) -> None:
    """Refuse to use a dataset whose files differ from what the bundle recorded."""
    for f in entry["files"]:
        path = source_root / f["path"]
        if not path.is_file():
            raise DataError(f"dataset {entry['name']!r}: file {f['path']} is missing under {source_root}")
        actual = sha256_file(path)
        if actual != f["sha256"]:
            raise DataError(
                f"dataset {entry['name']!r}: {f['path']} changed since compile "
                f"(sha256 {actual[:12]}…, bundle recorded {f['sha256'][:12]}…); recompile the recipe"
            )


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """`train`, `train[:100]`, `train[10%:]` -> (name, start, stop)."""
    m = _SPLIT_RE.match(split or "train")
    if not m:
        raise DataError(f"bad split {split!r}; expected e.g. 'train', 'train[:1000]' or 'train[10%:90%]'")
    return m["name"], m["start"], m["stop"]


def _bound(text: str | None, n: int) -> int | None:
    if text is None:
        return None
    return int(n * int(text[:-1]) / 100) if text.endswith("%") else int(text)


def slice_bounds(split: str, n: int) -> range:
    """Record indices a split expression selects out of n records."""
    _, start, stop = parse_split(split)
    return range(n)[slice(_bound(start, n), _bound(stop, n))]


# ---------------------------------------------------------------- per file: tkc.dataio's readers, shared with the probe


def _records(path: Path, ftype: str) -> Iterator[tuple[int, object]]:
    """(line or index, record) of one file; a bad JSON line becomes a BadRecord (skipped or refused per
    on_bad_record); a bad JSON array is refused with the whole file's line and column."""
    for where, record in iter_file(path, ftype):
        if isinstance(record, BadJson) and record.colno is not None:
            record = BadRecord(f"invalid JSON ({record.msg} at column {record.colno})", "one JSON object per line")
        elif isinstance(record, BadJson):
            _refuse_json(path)
        yield where, record


def _refuse_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    raise DataError(f"{path.name}: invalid JSON")


def iter_entry_records(entry: dict, source_root: Path) -> Iterator[tuple[Where, object]]:
    """All raw records of a dataset entry in file order, before split/max_samples."""
    ftype = entry["file_type"]
    if ftype in ("hf_disk", "hub"):
        yield from _hf_records(entry, source_root)
        return
    if ftype not in FILE_TYPES:
        raise DataError(f"dataset {entry['name']!r}: unsupported file_type {ftype!r}")
    for f in entry["files"]:
        path = source_root / f["path"]
        for where, record in _records(path, ftype):
            yield Where(f["path"], where, ftype in _BY_LINE, entry["name"]), record


def load_hf(entry: dict, source_root: Path):
    """The `datasets.Dataset` of an hf_disk folder or a hub id (from the local HF cache only), split selected."""
    import datasets

    name, _, _ = parse_split(entry["split"])
    if entry["file_type"] == "hf_disk":
        ds = datasets.load_from_disk(str(source_root / entry["path"]))
        if isinstance(ds, datasets.DatasetDict):
            if name not in ds:
                raise DataError(f"dataset {entry['name']!r}: no split {name!r}; it has {sorted(ds)}")
            ds = ds[name]
        return ds
    # hub datasets come from the local HF cache only: `tkc run` never downloads behind the bundle's back
    snapshot, missing = hub_snapshot(entry)
    try:
        if snapshot is not None:  # the repository's files at that revision, read like a local folder
            return datasets.load_dataset(str(snapshot), split=name)
        # not in the hub cache: a dataset `datasets` prepared earlier (its own cache) still loads offline
        return datasets.load_dataset(entry["path"], revision=entry["revision"], split=name,
                                     download_mode="reuse_cache_if_exists")  # fmt: skip
    except Exception as exc:  # offline, not cached, no such split: one message naming the dataset
        why = f"{missing}; and `datasets` has no copy either: {exc}" if missing else str(exc)
        msg = f"dataset {entry['name']!r}: cannot load {entry['path']!r} from the local HF cache: {why}"
        raise DataError(msg) from exc


def hub_snapshot(entry: dict) -> tuple[Path | None, str | None]:
    """(the local folder to read, None), or (None, why the hub cache has no snapshot of entry's revision).

    A path naming an existing folder is read as it is (what `datasets.load_dataset` does with a folder);
    otherwise the id is looked up in the local Hugging Face hub cache (HF_HUB_CACHE / HF_HOME), never online.
    """
    if Path(entry["path"]).is_dir():
        return Path(entry["path"]), None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    rev, cache = entry["revision"], hub_cache_dir()  # from the environment now (huggingface_hub froze its own)
    try:
        folder = snapshot_download(entry["path"], repo_type="dataset", revision=rev, cache_dir=cache,
                                   local_files_only=True)  # fmt: skip
    except (LocalEntryNotFoundError, HFValidationError):
        return (
            None,
            f"the hub cache {cache} has no snapshot of {entry['path']!r} at revision {rev or 'main'!r}",
        )
    return Path(folder), None


def hub_fingerprint(entry: dict, source_root: Path) -> str | None:
    """What identifies a hub dataset's content for the cache key (its files are not hashed in the bundle)."""
    return load_hf(entry, source_root)._fingerprint if entry["file_type"] == "hub" else None


def _hf_records(entry: dict, source_root: Path) -> Iterator[tuple[Where, object]]:
    label = entry["path"] if entry["file_type"] == "hf_disk" else f"hub:{entry['path']}"
    for i, record in enumerate(load_hf(entry, source_root)):
        yield Where(label, i, False, entry["name"]), record


def read_entry(entry: dict, source_root: Path, *, verify: bool = True) -> list[tuple[Where, object]]:
    """Verified, split-sliced, max_samples-capped raw records of one dataset entry."""
    if verify:
        verify_files(entry, source_root)
    records = list(iter_entry_records(entry, source_root))
    name, _, _ = parse_split(entry["split"])
    if name != "train" and entry["file_type"] not in ("hf_disk", "hub"):
        raise DataError(f"dataset {entry['name']!r}: local files only have a 'train' split, not {name!r}")
    records = [records[i] for i in slice_bounds(entry["split"], len(records))]
    cap = entry["max_samples"]
    return records[:cap] if cap is not None else records
