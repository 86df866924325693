"""A damaged data cache entry marked COMPLETE (truncated, altered, a file missing) is set aside and rebuilt."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from tkc.runtime.data import build_stage_data

_spec = importlib.util.spec_from_file_location("data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py")
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


def _build(tmp_path: Path):
    src = tmp_path / "src"
    if not src.is_dir():
        src.mkdir()
        (src / "d.jsonl").write_bytes((H.FIXTURES / "sft_ok.jsonl").read_bytes())
    e = H.entry("d", "d.jsonl", "alpaca", "sft", src)
    return build_stage_data(H.resolved([e]), H.stage("sft", ["d"]), H.tokenizer(), src, tmp_path / "cache",
                            template_text=H.template_text("chatml_local"))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_last_token(p: Path) -> None:  # same size, still a readable Arrow stream: only the hash can tell
    import pyarrow as pa

    data = bytearray(p.read_bytes())
    table = pa.ipc.open_stream(pa.py_buffer(bytes(data))).read_all()
    last = table.column("input_ids").combine_chunks().values[-1].as_py().to_bytes(4, "little")
    at = bytes(data).rfind(last)
    data[at] ^= 0x01
    p.write_bytes(bytes(data))


def _legacy_truncate(p: Path) -> None:  # an entry written before COMPLETE recorded its files
    (p.parent / "COMPLETE").write_text("")
    _truncate(p)


DAMAGE = {
    "train.arrow truncated": ("train.arrow", _truncate),
    "train.arrow altered": ("train.arrow", _flip_last_token),
    "stats.json missing": ("stats.json", lambda p: p.unlink()),
    "train.arrow truncated (legacy marker)": ("train.arrow", _legacy_truncate),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_complete_entry_is_set_aside_and_rebuilt(tmp_path, damage, caplog):
    first = _build(tmp_path)
    rows = first.train.to_dict()
    entry = first.cache_path
    name, hurt = DAMAGE[damage]
    hurt(entry / name)
    with caplog.at_level(logging.WARNING, logger="tkc.runtime.data.store"):
        again = _build(tmp_path)
    assert not again.stats["cache_hit"]
    assert again.train.to_dict() == rows
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, f"{entry.name}.corrupt-1"]
    kept = entry.parent / f"{entry.name}.corrupt-1"
    assert (kept / "COMPLETE").is_file()  # the damaged copy is kept as it was
    assert not (kept / name).exists() or (kept / name).read_bytes() != (entry / name).read_bytes()
    assert f"data cache entry {entry} is damaged" in caplog.text and f"{entry.name}.corrupt-1" in caplog.text
    assert _build(tmp_path).stats["cache_hit"]  # the rebuilt entry is whole


def test_an_undamaged_entry_is_a_hit_and_records_its_files(tmp_path):
    first = _build(tmp_path)
    record = json.loads((first.cache_path / "COMPLETE").read_text())
    assert sorted(record["files"]) == ["key.json", "stats.json", "train.arrow"]
    assert _build(tmp_path).stats["cache_hit"]
