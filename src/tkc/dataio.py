"""One reader per data file format, shared by the compiler's probe and the runtime's data pipeline (torch-free).

Each reader yields (line or index, record) in file order: the line number for jsonl, csv and txt (and a `.json`
file that holds JSON lines), the record index for a JSON array, parquet and arrow (`json_array_lines` gives the
line each JSON-array record starts on, for messages). A line that is not valid JSON
comes back as a `BadJson` record, so each caller words the problem its own way (a compile diagnostic, a skipped
row). A JSON array is decoded one record at a time from a bounded, growing prefix, never loaded whole.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_MAX_PREFIX_BYTES = 64 << 20
_CHUNK = 1 << 16
FILE_TYPES = ("jsonl", "json", "csv", "txt", "parquet", "arrow")


@dataclass(frozen=True)
class BadJson:
    """A record that did not decode: the decoder's message, and its column when the record is one line."""

    msg: str
    colno: int | None = None


def iter_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, _loads(line)


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return BadJson(exc.msg, exc.colno)


def iter_json(path: Path) -> Iterator[tuple[int, object]]:
    """Records of a top-level JSON array, decoded one at a time; a `.json` file of JSON lines reads as jsonl."""
    for where, _, record in _iter_json(path):
        yield where, record


def json_array_lines(path: Path, n: int) -> list[int] | None:
    """The 1-based line each of the first `n` records of a JSON array starts on; None for a `.json` of JSON lines
    (whose readers yield lines already)."""
    out: list[int] = []
    for _, line, _record in _iter_json(path):
        if line is None:
            return None
        if len(out) >= n:
            break
        out.append(line)
    return out


def _iter_json(path: Path) -> Iterator[tuple[int, int | None, object]]:
    """(index or line, start line or None, record): a JSON array's records with the line each starts on."""
    decoder, text_decoder = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        buf, pos, eof = _fill(f, text_decoder, "", 0, False)
        if pos >= len(buf):
            return
        if buf[pos] != "[":  # a `.json` file holding JSON lines, which HF datasets reads too
            yield from ((line, None, record) for line, record in iter_jsonl(path))
            return
        newlines = buf.count("\n", 0, pos)
        buf, pos, eof = _fill(f, text_decoder, buf[pos + 1:], 0, eof)
        index, dropped = 0, 1 + newlines   # 1 + the newlines of the text consumed and dropped from buf
        while pos < len(buf) and buf[pos] != "]":
            if buf[pos] == "," and index:
                buf, pos, eof = _fill(f, text_decoder, buf, pos + 1, eof)
                continue
            line = dropped + buf.count("\n", 0, pos)   # where this record starts
            try:
                record, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof or len(buf) > _MAX_PREFIX_BYTES:
                    yield index, line, BadJson(exc.msg)
                    return
                buf, eof = _read_more(f, text_decoder, buf)
                continue
            yield index, line, record
            index += 1
            dropped += buf.count("\n", 0, end)
            buf, pos, eof = _fill(f, text_decoder, buf[end:], 0, eof)  # keep the buffer about one record long


def _fill(f, text_decoder, buf: str, pos: int, eof: bool) -> tuple[str, int, bool]:
    """Skip whitespace from `pos`, reading more until a non-space character is available or the file ends."""
    pos = _skip_ws(buf, pos)
    while pos >= len(buf) and not eof:
        buf, eof = _read_more(f, text_decoder, buf)
        pos = _skip_ws(buf, pos)
    return buf, pos, eof


def _read_more(f, text_decoder, buf: str) -> tuple[str, bool]:
    chunk = f.read(max(_CHUNK, len(buf)))
    return buf + text_decoder.decode(chunk, final=not chunk), not chunk


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos


def iter_csv(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row


def iter_txt(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, {"text": line.rstrip("\n")}


def iter_table(path: Path, file_type: str, limit: int | None = None) -> Iterator[tuple[int, object]]:
    """parquet or arrow (IPC stream or file) rows; with `limit`, only the first batch of about that many rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file_type == "parquet":
        if limit is None:
            yield from enumerate(pq.read_table(path).to_pylist())
        else:
            yield from enumerate(next(pq.ParquetFile(path).iter_batches(batch_size=limit), pa.table({})).to_pylist())
        return
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
        if limit is None:
            yield from enumerate(reader.read_all().to_pylist())
            return
        first = reader.get_batch(0) if hasattr(reader, "get_batch") else next(iter(reader), None)
    yield from enumerate(first.to_pylist() if first is not None else [])


_LINE_READERS = {"jsonl": iter_jsonl, "json": iter_json, "csv": iter_csv, "txt": iter_txt}


def iter_file(path: Path, file_type: str, limit: int | None = None) -> Iterator[tuple[int, object]]:
    """Every record of one data file (or the first `limit`), as (line or index, record or BadJson)."""
    it = _LINE_READERS[file_type](path) if file_type in _LINE_READERS else iter_table(path, file_type, limit)
    for i, item in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield item
