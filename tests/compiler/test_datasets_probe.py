"""The compile-time probe: hashes, file types, first-record shape checks, registry reading."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tkc.compiler.dataset_formats import resolve_columns_and_tags
from tkc.compiler.datasets_probe import iter_records, load_registry, probe_dataset

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
SHARED = Path(__file__).parents[2].parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared demo datasets not found at {SHARED}")


def _cols(fmt="alpaca", kind="sft", **kw):
    return resolve_columns_and_tags(fmt, kind, kw or None, None)


def test_hashes_and_type(tmp_path):
    cols, tags = _cols()
    probe = probe_dataset(
        FIXTURES / "sft_ok.jsonl", None, cols, "alpaca", "sft", tags=tags, root=FIXTURES.parent
    )
    data = (FIXTURES / "sft_ok.jsonl").read_bytes()
    assert probe.ok and probe.file_type == "jsonl" and probe.records_checked == 3
    assert probe.files[0].to_json() == {
        "path": "data/sft_ok.jsonl",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def test_broken_lines_are_reported_with_line_numbers():
    cols, tags = _cols()
    probe = probe_dataset(FIXTURES / "sft_broken.jsonl", "jsonl", cols, "alpaca", "sft", tags=tags)
    where = [(p.file, p.line) for p in probe.problems]
    assert where == [("sft_broken.jsonl", 3), ("sft_broken.jsonl", 5)]
    assert (
        "'output' (response) is int" in probe.problems[0].message and probe.problems[0].expected == "a string"
    )
    assert "invalid JSON" in probe.problems[1].message


def test_missing_column_and_json_index(tmp_path):
    records = [{"conversations": [{"from": "human", "value": "hi"}]}, {"convos": []}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    cols, tags = _cols("sharegpt")
    probe = probe_dataset(tmp_path / "d.json", None, cols, "sharegpt", "sft", tags=tags)
    # a one-line JSON array: every record starts on line 1, so problems carry the record index too
    assert [(p.line, p.record, p.message) for p in probe.problems] == [
        (1, 1, "missing column 'conversations' (messages); did you mean 'convos'?")
    ]
    cols, tags = _cols("sharegpt", messages="conversations")
    tags = {**tags, "role": "role"}
    probe = probe_dataset(tmp_path / "d.json", None, cols, "sharegpt", "sft", tags=tags)
    assert (probe.problems[0].line, probe.problems[0].record) == (1, 0) and "'role'" in probe.problems[0].expected
    (tmp_path / "d.json").write_text(json.dumps(records, indent=2))  # one record per block: each at its own line
    probe = probe_dataset(tmp_path / "d.json", None, cols, "sharegpt", "sft", tags=tags)
    assert [(p.line, p.record) for p in probe.problems] == [(2, 0), (10, 1)]


def test_folder_of_files_csv_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "many"
    d.mkdir()
    pq.write_table(
        pa.table({"instruction": ["a", "b"], "input": ["", ""], "output": ["x", "y"]}), d / "b.parquet"
    )
    pq.write_table(pa.table({"instruction": ["c"], "input": [""], "output": ["z"]}), d / "a.parquet")
    (d / ".hidden").write_text("ignored")
    cols, tags = _cols()
    probe = probe_dataset(d, None, cols, "alpaca", "sft", tags=tags, root=tmp_path)
    assert probe.file_type == "parquet" and [f.path for f in probe.files] == [
        "many/a.parquet",
        "many/b.parquet",
    ]
    assert probe.ok and probe.records_checked == 3
    (tmp_path / "t.csv").write_text("instruction,input,output\nhi,,there\n")
    assert probe_dataset(tmp_path / "t.csv", None, cols, "alpaca", "sft", tags=tags).ok
    (d / "c.json").write_text("[]")
    with pytest.raises(ValueError, match="mixed file types"):
        probe_dataset(d, None, cols, "alpaca", "sft")
    with pytest.raises(FileNotFoundError):
        probe_dataset(tmp_path / "nope.json", None, cols, "alpaca", "sft")


def test_json_array_is_read_incrementally(tmp_path):
    # 20 MB array: the probe must not parse all of it
    rec = json.dumps({"instruction": "x" * 1000, "input": "", "output": "y"})
    (tmp_path / "big.json").write_text("[\n" + ",\n".join([rec] * 20000) + "\n]")
    start = time.perf_counter()
    first = list(iter_records(tmp_path / "big.json", "json", 20))
    assert len(first) == 20 and first[19][0] == 19
    assert time.perf_counter() - start < 0.05


def test_json_lines_in_a_dot_json_file(tmp_path):
    (tmp_path / "l.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [r for _, r in iter_records(tmp_path / "l.json", "json")] == [{"text": "a"}, {"text": "b"}]


@needs_shared
def test_registry_and_shared_demos_probe_clean():
    reg = load_registry(SHARED / "dataset_info.json")
    assert reg["dpo_en_demo"]["kind"] == "preference" and reg["kto_en_demo"]["columns"]["kto_tag"] == "label"
    assert reg["c4_demo"]["format"] == "text" and reg["c4_demo"]["columns"]["text"] == "text"
    assert reg["mllm_demo"]["tags"]["role"] == "role" and reg["alpaca_en"]["source"] == "hub"
    start = time.perf_counter()
    for name in (
        "alpaca_en_demo",
        "dpo_en_demo",
        "kto_en_demo",
        "glaive_toolcall_en_demo",
        "c4_demo",
        "mllm_demo",
    ):
        e = reg[name]
        probe = probe_dataset(
            SHARED / e["path"], None, e["columns"], e["format"], e["kind"], tags=e["tags"], root=SHARED
        )
        assert probe.ok, (name, probe.problems)
    assert time.perf_counter() - start < 0.5


def test_probe_imports_no_heavy_libraries():
    code = "import sys, tkc.compiler.datasets_probe; print([m for m in ('torch','transformers','datasets') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_column_suggests_the_near_name(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"instructions": "q", "input": "", "output": "a"}) + "\n")
    cols, tags = _cols()
    probe = probe_dataset(tmp_path / "d.jsonl", None, cols, "alpaca", "sft", tags=tags)
    assert probe.problems[0].message == "missing column 'instruction' (prompt); did you mean 'instructions'?"
    assert probe.problems[0].line == 1
