"""Loading step for media columns: every record of a dataset with images/videos/audios columns, read once.

Per dataset: the media root (`data.media.root`, else the dataset file's folder; PATH001 outside the read roots, and
then nothing under it is read), each record's placeholders counted against its media (MM002) and each reference
resolved by `tkc.bundle.media.resolve_media_path` (MM003: a URL, a path out of the root, a missing file, an image
over `max_image_bytes`: refused by stat, never opened). Every media file left is hashed once into the bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkc.bundle.canonical import sha256_file
from tkc.bundle.media import (
    MAX_AUDIO_BYTES,
    MEDIA_KINDS,
    PLACEHOLDERS,
    MediaRefused,
    count_placeholders,
    resolve_media_path,
)
from tkc.compiler import paths
from tkc.compiler.plan import DatasetFacts
from tkc.dataio import iter_file, json_array_lines
from tkc.schema.diagnostics import Diagnostic
from tkc.schema.load import LoadedRecipe

MAX_REPORTED = 10   # per dataset and code; the last one says how many more records share a problem
_NOT_TEXT = {"tools", "kto_tag", *MEDIA_KINDS}


@dataclass(frozen=True)
class MediaFacts:
    """A dataset's media root (relative POSIX from the source root), its hashed media files, the problems found."""

    root: str | None
    files: tuple[dict[str, Any], ...] = ()
    problems: tuple[Diagnostic, ...] = ()


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def media_kinds(columns: Any) -> tuple[str, ...]:
    """The media kinds a dataset's resolved columns name."""
    return tuple(k for k in MEDIA_KINDS if (columns or {}).get(k))


def _root(recipe: LoadedRecipe, source_root: Path, name: str, facts: DatasetFacts) -> tuple[Path, tuple]:
    given = recipe.spec.data.media.root
    if given:
        return (recipe.entry.parent / given).expanduser(), ("data", "media", "root")
    path = source_root / facts.path
    key = ("data", "datasets", name, "path" if recipe.spec.data.datasets[name].path else "registry")
    return (path if path.is_dir() else path.parent), key


def load_media(recipe: LoadedRecipe, source_root: Path, datasets: dict[str, DatasetFacts],
               roots: tuple[Path, ...]) -> dict[str, MediaFacts]:
    """MediaFacts for each local dataset with media columns (none for the others)."""
    out = {}
    for name, facts in datasets.items():
        kinds = media_kinds(facts.columns)
        if not kinds or not facts.local or facts.file_type == "missing":
            continue
        root, key = _root(recipe, source_root, name, facts)
        rel = _rel(root, source_root)
        if (real := paths.outside(root, roots)) is not None:
            pos = recipe.position(key)
            out[name] = MediaFacts(rel, problems=(Diagnostic(
                "PATH001", paths.message("media root", str(rel), real, roots), ".".join(map(str, key)),
                pos.file if pos else None, pos.line if pos else None, hint=paths.HINT),))
            continue
        out[name] = _scan(recipe, source_root, name, facts, kinds, root)
    return out


def _scan(recipe: LoadedRecipe, source_root: Path, name: str, facts: DatasetFacts, kinds: tuple[str, ...],
          root: Path) -> MediaFacts:
    limit, found = recipe.spec.data.media.max_image_bytes, _Found(f"data.datasets.{name}")
    hashed: dict[Path, dict[str, Any]] = {}
    for f in facts.files:
        path = source_root / f["path"]
        for line, record in _records(path, facts.file_type):
            if not isinstance(record, dict):
                continue   # DATA001's concern (the probe)
            where = (f["path"], line)
            for kind in kinds:
                refs = record.get(facts.columns[kind]) or []
                refs = [refs] if isinstance(refs, str) else refs
                _check_count(found, where, kind, _count(record, facts.columns, PLACEHOLDERS[kind]), len(refs))
                for ref in refs:
                    _hash_one(found, where, kind, ref, root, limit, hashed, source_root)
    files = tuple(sorted(hashed.values(), key=lambda d: d["path"]))
    return MediaFacts(_rel(root, source_root), files, found.diagnostics())


def _check_count(found: _Found, where: tuple[str, int], kind: str, placeholders: int, media: int) -> None:
    if placeholders != media:
        ph = PLACEHOLDERS[kind]
        found.add("MM002", where, f"{placeholders} {ph} placeholder{'s' * (placeholders != 1)} in the text but "
                  f"{media} {kind} file{'s' * (media != 1)}: each {kind[:-1]} needs one {ph} where it goes")


def _hash_one(found: _Found, where: tuple[str, int], kind: str, ref: Any, root: Path, limit: int,
              hashed: dict[Path, dict[str, Any]], source_root: Path) -> None:
    try:
        real = resolve_media_path(ref, root)
        size = real.stat().st_size
        if kind == "images" and size > limit:
            raise MediaRefused(f"image {ref!r} is {size} bytes, over data.media.max_image_bytes ({limit})")
        if kind == "audios" and size > MAX_AUDIO_BYTES:
            raise MediaRefused(f"audio {ref!r} is {size} bytes, over tkc's limit of {MAX_AUDIO_BYTES}")
    except MediaRefused as exc:
        found.add("MM003", where, str(exc))
        return
    if real not in hashed:
        hashed[real] = {"path": _rel(real, source_root), "sha256": sha256_file(real), "size": size}


def _count(record: dict, columns: Any, placeholder: str) -> int:
    """Placeholders in every text column of a record (strings, nested in turns too)."""
    return sum(_count_in(record.get(col), placeholder) for key, col in columns.items()
               if col and key not in _NOT_TEXT)


def _count_in(value: Any, placeholder: str) -> int:
    if isinstance(value, str):
        return count_placeholders(value, placeholder)
    if isinstance(value, dict):
        return sum(_count_in(v, placeholder) for v in value.values())
    if isinstance(value, list):
        return sum(_count_in(v, placeholder) for v in value)
    return 0


def _records(path: Path, file_type: str) -> list[tuple[int, Any]]:
    """(1-based line, record) for every record; a JSON array's records at the line where each one starts."""
    records = list(iter_file(path, file_type))
    if file_type == "json" and records and (lines := json_array_lines(path, len(records))) is not None:
        return list(zip(lines, (r for _, r in records), strict=False))
    return [(line + 1 if file_type in ("parquet", "arrow") else line, r) for line, r in records]


class _Found:
    """Diagnostics per code, at most MAX_REPORTED each, then one that counts the rest."""

    def __init__(self, key: str):
        self.key = key
        self.items: dict[str, list[Diagnostic]] = {}
        self.more: dict[str, int] = {}

    def add(self, code: str, where: tuple[str, int], message: str) -> None:
        items = self.items.setdefault(code, [])
        if len(items) < MAX_REPORTED:
            items.append(Diagnostic(code, message, self.key, where[0], where[1]))
        else:
            self.more[code] = self.more.get(code, 0) + 1

    def diagnostics(self) -> tuple[Diagnostic, ...]:
        out = [d for items in self.items.values() for d in items]
        for code, n in self.more.items():
            last = self.items[code][-1]
            out.append(Diagnostic(code, f"{n} more records have the same kind of problem", self.key, last.file))
        return tuple(out)

