"""Compile-time dataset probe: file list with sha256, file type, and a shape check of the first records (stdlib + pyarrow)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tkc.bundle.canonical import sha256_file
from tkc.compiler import dataset_formats as formats
from tkc.dataio import BadJson, iter_file, json_array_lines

SUFFIX_TYPES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow",
                ".txt": "txt"}  # fmt: skip


@dataclass(frozen=True)
class ProbeProblem:
    file: str  # relative POSIX path
    line: int | None  # jsonl/json/csv/txt: 1-based line (a JSON array: where the record starts); parquet/arrow/hf_disk: 0-based record index
    message: str
    expected: str
    record: int | None = None  # a JSON array's 0-based record index (several records may share a line)


@dataclass(frozen=True)
class ProbeFile:
    path: str
    sha256: str
    size: int

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Probe:
    file_type: str
    files: tuple[ProbeFile, ...]
    problems: tuple[ProbeProblem, ...] = ()
    records_checked: int = 0
    columns_seen: tuple[str, ...] = ()
    columns: dict | None = None  # the columns the records were checked with (`columns` plus auto-mapped ones)
    auto_mapped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def is_hf_disk(path: Path) -> bool:
    """A `datasets` `save_to_disk` folder (Dataset or DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def list_data_files(path: Path) -> list[Path]:
    """The files a dataset path stands for, sorted: the file itself, or every non-hidden file under the folder."""
    if path.is_file():
        return [path]
    files = [
        p
        for p in path.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def infer_file_type(path: Path, files: list[Path]) -> str:
    """File type from the suffix(es); a folder must hold one type only."""
    if is_hf_disk(path):
        return "hf_disk"
    types = {SUFFIX_TYPES.get(p.suffix.lower()) for p in files}
    if None in types:
        odd = sorted({p.suffix or p.name for p in files if p.suffix.lower() not in SUFFIX_TYPES})
        raise ValueError(f"{path}: unsupported file type(s) {odd}; expected one of {', '.join(SUFFIX_TYPES)}")
    if len(types) != 1:
        raise ValueError(
            f"{path}: mixed file types {sorted(t for t in types if t)}; put one type per dataset"
        )
    return types.pop()  # type: ignore[return-value]


def _rel(p: Path, root: Path) -> str:
    resolved, base = p.resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else p.as_posix()


def iter_records(path: Path, file_type: str, n: int = 20) -> Iterator[tuple[int, object]]:
    """The first `n` records of one data file, as (line or index, record); bad JSON comes back as a `_BadJson`."""
    for where, record in iter_file(path, file_type, n):
        if isinstance(record, BadJson):
            at = f" at column {record.colno}" if record.colno is not None else ""
            record = _BadJson(f"invalid JSON: {record.msg}{at}")
        yield where, record


class _BadJson:
    def __init__(self, error: str):
        self.error = error


# ---------------------------------------------------------------- shape checks


def _check_record(record: object, columns: dict, shapes: dict) -> list[tuple[str, str]]:
    if isinstance(record, _BadJson):
        return [(record.error, "one JSON object")]
    if not isinstance(record, dict):
        return [(f"record is {type(record).__name__}", "a JSON object")]
    problems = []
    for key, check in shapes.items():
        name = columns[key]
        if name not in record:
            if key not in formats.OPTIONAL_COLUMNS:
                problems.append(
                    (
                        f"missing column {name!r} ({key}){formats.suggest(name, [str(k) for k in record])}",
                        f"column {name!r}; record has {sorted(record)}",
                    )
                )
            continue
        bad = check(record[name])
        if bad:
            problems.append((f"column {name!r} ({key}) {bad[0]}", bad[1]))
    return problems


def probe_dataset(
    path: Path,
    file_type: str | None,
    columns: dict,
    fmt: str,
    kind: str,
    max_records: int = 20,
    *,
    tags: dict | None = None,
    root: Path | None = None,
    auto_columns: dict | None = None,
) -> Probe:
    """Hash every file of a local dataset and shape-check its first `max_records` records per file.

    File paths in the result are relative to `root` (the source root; default: the dataset path's parent).
    Raises FileNotFoundError/ValueError for a missing path or an unreadable file type; record-level trouble
    comes back as `Probe.problems`. `auto_columns` ({key: column name}) are mapped when a checked record has that
    column and `columns` names none; `Probe.columns` is the result and `Probe.auto_mapped` says which were added.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    root = Path(root) if root is not None else path.parent
    files = list_data_files(path)
    if not files:
        raise ValueError(f"dataset folder {path} holds no files")
    actual = infer_file_type(path, files)
    if file_type not in (None, actual) and not (file_type == "json" and actual == "jsonl"):
        raise ValueError(f"{path}: declared file_type {file_type!r} but the files are {actual!r}")
    file_type = file_type or actual
    hashed = tuple(ProbeFile(_rel(p, root), sha256_file(p), p.stat().st_size) for p in files)
    tags = tags if tags is not None else formats.resolve_columns_and_tags(fmt, kind, None, None)[1]
    records = _first_records(files, file_type, max_records, root)
    seen = {str(k) for *_, r in records if isinstance(r, dict) for k in r}
    # optional columns the data has and the recipe left unnamed (e.g. a sharegpt `tools` column) are read too
    found = {k: name for k, name in (auto_columns or {}).items() if name in seen and not columns.get(k)}
    columns = {**columns, **found}
    shapes = formats.column_checks(columns, fmt, tags)
    problems = [ProbeProblem(file, line, message, expected, index) for file, line, index, record in records
                for message, expected in _check_record(record, columns, shapes)]  # fmt: skip
    return Probe(file_type, hashed, tuple(problems), len(records), tuple(sorted(seen)), columns, tuple(sorted(found)))


def _first_records(files: list[Path], file_type: str, max_records: int,
                   root: Path) -> list[tuple[str, int, int | None, object]]:
    """(file, line or index, JSON-array index or None, record) of the first `max_records` records (the files in
    order); a JSON array's records are placed at the line each starts on."""
    if file_type == "hf_disk":
        files, file_type = [p for p in files if p.suffix == ".arrow"][:1], "arrow"
    out: list[tuple[str, int, int | None, object]] = []
    for p in files:
        found = list(iter_records(p, file_type, max_records))
        lines = json_array_lines(p, len(found)) if file_type == "json" and found else None
        if lines is not None and len(lines) == len(found):
            out += [(_rel(p, root), line, i, record) for line, (i, record) in zip(lines, found, strict=True)]
        else:
            out += [(_rel(p, root), where, None, record) for where, record in found]
        if len(out) >= max_records:
            break
    return out


# ---------------------------------------------------------------- LLaMA-Factory style registry


def load_registry(path: Path) -> dict:
    """Read a `dataset_info.json`-style registry into tkc dataset entries keyed by name (see `registry_entry`)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = {name: formats.registry_entry(name, info) for name, info in raw.items()}
    return {name: e for name, e in entries.items() if e is not None}
