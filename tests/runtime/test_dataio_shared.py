"""One reader per file format (tkc.dataio): the compiler's probe and the runtime read the same records at the same
lines or indices, each wording a bad JSON line its own way; the runtime refuses a bad JSON array with its line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tkc.compiler.datasets_probe import iter_records
from tkc.runtime.data.errors import BadRecord, DataError
from tkc.runtime.data.readers import iter_entry_records

ROWS = [{"instruction": "a", "output": "1"}, {"instruction": "b", "output": "2"}, {"instruction": "c", "output": "3"}]


def _write(folder: Path) -> dict[str, Path]:
    files = {"jsonl": folder / "d.jsonl", "json": folder / "d.json", "csv": folder / "d.csv",
             "txt": folder / "d.txt", "parquet": folder / "d.parquet", "arrow": folder / "d.arrow"}
    files["jsonl"].write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n\n{bad\n" + json.dumps(ROWS[2]) + "\n")
    files["json"].write_text(json.dumps(ROWS, indent=2))
    files["csv"].write_text("instruction,output\na,1\n\"b\nb\",2\nc,3\n")
    files["txt"].write_text("one\n\ntwo\nthree\n")
    pq.write_table(pa.Table.from_pylist(ROWS), files["parquet"])
    with pa.ipc.new_stream(str(files["arrow"]), pa.Table.from_pylist(ROWS).schema) as w:
        w.write_table(pa.Table.from_pylist(ROWS))
    return files


def _runtime(path: Path, ftype: str) -> list[tuple[int | None, object]]:
    entry = {"name": "d", "file_type": ftype, "files": [{"path": path.name}]}
    return [(where.line, rec) for where, rec in iter_entry_records(entry, path.parent)]


@pytest.mark.parametrize("ftype", ["jsonl", "json", "csv", "txt", "parquet", "arrow"])
def test_probe_and_runtime_read_the_same_records(tmp_path, ftype):
    path = _write(tmp_path)[ftype]
    probe, runtime = list(iter_records(path, ftype, 100)), _runtime(path, ftype)
    assert [w for w, _ in probe] == [w for w, _ in runtime] and len(probe) >= 3
    for (where, p), (_, r) in zip(probe, runtime, strict=True):
        if isinstance(r, BadRecord):      # the jsonl's line 4: each side says it its own way
            assert where == 4 and p.error == "invalid JSON: Expecting property name enclosed in double quotes " \
                                             "at column 2"
            assert r.message == "invalid JSON (Expecting property name enclosed in double quotes at column 2)"
        else:
            assert p == r
    if ftype in ("jsonl", "csv", "txt"):
        assert [w for w, _ in runtime] == {"jsonl": [1, 2, 4, 5], "csv": [2, 4, 5], "txt": [1, 3, 4]}[ftype]
    assert list(iter_records(path, ftype, 2)) == probe[:2]


def test_runtime_refuses_a_bad_json_array_with_its_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2,,}\n]\n')
    assert [w for w, _ in iter_records(path, "json")] == [0, 1]
    with pytest.raises(DataError, match=r"d.json: invalid JSON at line 3 column 11: Expecting property name"):
        _runtime(path, "json")
