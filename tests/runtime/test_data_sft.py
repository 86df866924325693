"""Runtime data, sft: exact label masks from real files, tool calls, media, bad records, the cache."""

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tkc.runtime.data import BadRecord, DataError, build_stage_data, collate
from tkc.runtime.data.convert import convert_record

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
needs_shared = pytest.mark.skipif(
    not H.SHARED.is_dir(), reason=f"shared demo datasets not found at {H.SHARED}"
)
IM_END = "<|im_end|>"


def _build(tmp_path, entries, kind="sft", template="qwen2_5", root=None, truncation="keep_response", **data):
    res = H.resolved(entries, **data)
    return build_stage_data(
        res,
        H.stage(kind, [e["name"] for e in entries]),
        H.tokenizer(),
        root or H.SHARED,
        tmp_path / "cache",
        template_text=H.template_text(template),
        truncation=truncation,  # not a plan field: the runtime's rule is keep_response
    )


def _trained_blocks(row) -> list[list[int]]:
    """Maximal runs of trained token ids."""
    blocks, current = [], []
    for i, lab in zip(row["input_ids"], row["labels"], strict=True):
        if lab != -100:
            assert lab == i
            current.append(i)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


@needs_shared
def test_alpaca_labels_are_exactly_response_plus_end_marker(tmp_path):
    tok = H.tokenizer()
    data = _build(
        tmp_path, [H.entry("alpaca", "alpaca_en_demo.json", "alpaca", "sft", H.SHARED)], cutoff_len=4096
    )
    records = json.loads((H.SHARED / "alpaca_en_demo.json").read_text())
    assert data.stats["examples"]["train"] == len(records) == len(data.train) and data.stats["truncated"] == 0
    expected = Counter(tuple(tok.encode(r["output"] + IM_END, add_special_tokens=False)) for r in records)
    got = Counter()
    for row in data.train:
        blocks = _trained_blocks(row)
        assert len(blocks) == 1
        got[tuple(blocks[0])] += 1
        assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert got == expected
    # throughput of the cold build (read, verify, convert, render, tokenize, write Arrow); `pytest -s` shows it
    print(f"\nalpaca_en_demo sft: {data.stats['examples_per_second']:.0f} examples/s cold")


def test_sharegpt_multi_turn_and_mask_history(tmp_path):
    tok = H.tokenizer()
    e = H.entry("multi", "data/sharegpt_multi.json", "sharegpt", "sft", H.FIXTURES.parent)
    for mask_history, want in ((False, ["Hi there", "4", "Blue"]), (True, ["4", "Blue"])):
        data = _build(
            tmp_path, [e], template="chatml_local", root=H.FIXTURES.parent, mask_history=mask_history
        )
        texts = sorted(tok.decode(b) for row in data.train for b in _trained_blocks(row))
        assert texts == sorted(w + IM_END for w in want)
    data = _build(tmp_path, [e], template="chatml_local", root=H.FIXTURES.parent, train_on_prompt=True)
    assert all(row["labels"] == row["input_ids"] for row in data.train)


@needs_shared
def test_glaive_tool_calls(tmp_path):
    e = H.entry(
        "glaive", "glaive_toolcall_en_demo.json", "sharegpt", "sft", H.SHARED, columns={"tools": "tools"}
    )
    record = json.loads((H.SHARED / "glaive_toolcall_en_demo.json").read_text())[0]
    ex = convert_record(record, e, H.SHARED)
    assert [m["role"] for m in ex["messages"]][:6] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    call = ex["messages"][3]["tool_calls"][0]["function"]
    assert call == {
        "name": "search_recipes",
        "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]},
    }
    assert ex["tools"][0]["type"] == "function" and ex["tools"][0]["function"]["name"] == "search_recipes"
    data = _build(tmp_path, [e], cutoff_len=4096)
    assert data.stats["examples"]["train"] == 300 and data.stats["skipped"]["count"] == 0
    tok = H.tokenizer()
    rows = [r for r in data.train if "search_recipes" in tok.decode(r["input_ids"])]
    trained = [tok.decode(b) for b in _trained_blocks(rows[0])]
    assert any(t.startswith('<tool_call>\n{"name": "search_recipes"') and t.endswith(IM_END) for t in trained)
    assert not any("<tool_response>" in t or "# Tools" in t for t in trained)


@needs_shared
def test_mllm_images_pass_through(tmp_path):
    e = H.entry(
        "mllm",
        "mllm_demo.json",
        "sharegpt",
        "sft",
        H.SHARED,
        columns={"messages": "messages", "images": "images"},
        tags={"role": "role", "content": "content", "user": "user", "assistant": "assistant"},
    )
    data = _build(tmp_path, [e])
    assert len(data.train) == 6
    for row in data.train:
        assert row["images"] and all(Path(p).is_absolute() and Path(p).is_file() for p in row["images"])
        assert all(Path(p).parent == (H.SHARED / "mllm_demo_data").resolve() for p in row["images"])
    batch = collate([data.train[0], data.train[1]], pad_id=0)
    assert isinstance(batch["images"], list) and batch["input_ids"].shape[0] == 2


def test_broken_line_is_named(tmp_path):
    e = H.entry("broken", "data/sft_broken.jsonl", "alpaca", "sft", H.FIXTURES.parent)
    with pytest.raises(BadRecord) as info:
        _build(tmp_path, [e], template="chatml_local", root=H.FIXTURES.parent)
    assert (
        str(info.value) == "data/sft_broken.jsonl:3: column 'output' (response) is int 2 (expected a string)"
    )


def test_skip_mode_reports_counts_and_reasons(tmp_path):
    e = H.entry("broken", "data/sft_broken.jsonl", "alpaca", "sft", H.FIXTURES.parent, on_bad_record="skip")
    data = _build(tmp_path, [e], template="chatml_local", root=H.FIXTURES.parent)
    assert len(data.train) == 3
    skipped = data.stats["skipped"]
    assert skipped["count"] == 2 and [r["line"] for r in skipped["reasons"]] == [3, 5]
    assert "invalid JSON" in skipped["reasons"][1]["message"]
    assert data.stats["datasets"]["broken"] == {"records": 5, "converted": 3, "skipped": 2}


def test_bad_shapes_name_the_record(tmp_path):
    recs = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    e = H.entry("d", "d.json", "sharegpt", "sft", tmp_path)
    with pytest.raises(
        BadRecord, match=r"^d.json record 1: message 1 has from 'bot' \(expected one of 'human'"
    ):
        _build(tmp_path, [e], template="chatml_local", root=tmp_path)


def test_cache_hit_and_every_change_misses(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "d.jsonl").write_bytes((H.FIXTURES / "sft_ok.jsonl").read_bytes())
    e = H.entry("d", "d.jsonl", "alpaca", "sft", src)
    first = _build(tmp_path, [e], template="chatml_local", root=src)
    again = _build(tmp_path, [e], template="chatml_local", root=src)
    assert (first.stats["cache_hit"], again.stats["cache_hit"]) == (False, True)
    assert again.train.to_dict() == first.train.to_dict()
    assert not list((tmp_path / "cache").rglob("*.pkl")) and list((tmp_path / "cache").rglob("train.arrow"))
    assert not _build(tmp_path, [e], template="chatml_local", root=src, cutoff_len=512).stats["cache_hit"]
    assert not _build(tmp_path, [e], template="qwen2_5", root=src).stats["cache_hit"]
    assert not _build(tmp_path, [{**e, "max_samples": 2}], template="chatml_local", root=src).stats[
        "cache_hit"
    ]
    with (src / "d.jsonl").open("a") as f:
        f.write('{"instruction": "Hi", "input": "", "output": "Hello"}\n')
    with pytest.raises(DataError, match="changed since compile"):
        _build(tmp_path, [e], template="chatml_local", root=src)
    changed = H.entry("d", "d.jsonl", "alpaca", "sft", src)
    data = _build(tmp_path, [changed], template="chatml_local", root=src)
    assert not data.stats["cache_hit"] and len(data.train) == 4


def test_truncation_keeps_the_response(tmp_path):
    long_prompt = " ".join(["the water is long"] * 200)
    recs = [{"instruction": long_prompt, "input": "", "output": "What is 2+3? 5"}]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    e = H.entry("d", "d.json", "alpaca", "sft", tmp_path)
    tok = H.tokenizer()
    data = _build(tmp_path, [e], template="chatml_local", root=tmp_path, cutoff_len=64)
    row = data.train[0]
    assert len(row["input_ids"]) == 64 and data.stats["truncated"] == 1
    assert tok.decode(_trained_blocks(row)[0]) == "What is 2+3? 5" + IM_END
    assert tok.decode(row["input_ids"]).endswith("<|im_start|>assistant\nWhat is 2+3? 5<|im_end|>\n")
    with pytest.raises(DataError, match=r"no training rows left .* 1 with nothing to train after truncation"):
        _build(tmp_path, [e], template="chatml_local", root=tmp_path, cutoff_len=64, truncation="right")


def test_mixing_interleave_and_eval_split(tmp_path):
    root = H.FIXTURES.parent
    a = H.entry("a", "data/sft_ok.jsonl", "alpaca", "sft", root)
    b = {**H.entry("b", "data/sharegpt_multi.json", "sharegpt", "sft", root), "weight": 3.0}
    data = _build(tmp_path, [a, b], template="chatml_local", root=root, val_size=1)
    assert (len(data.train), len(data.eval)) == (4, 1)
    inter = _build(tmp_path, [a, b], template="chatml_local", root=root, mix="interleave")
    again = _build(tmp_path / "other", [a, b], template="chatml_local", root=root, mix="interleave")
    assert inter.train.to_dict() == again.train.to_dict() and 1 <= len(inter.train) <= 5
    assert not np.isnan(inter.stats["padding_fraction"]["unpacked"])


def test_template_refusals_follow_each_datasets_policy(tmp_path):
    refusing = H.CHATML.replace(
        "{% for m in messages %}", "{% for m in messages %}{% if 'FORBIDDEN' in m['content'] %}"
        "{{ raise_exception('no forbidden words') }}{% endif %}"
    )  # fmt: skip
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"instruction": "say FORBIDDEN", "input": "", "output": "no"}) + "\n"
        + json.dumps({"instruction": "say hi", "input": "", "output": "hi"}) + "\n"
    )  # fmt: skip
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"instruction": "What is 2+3?", "input": "", "output": "5"}) + "\n"
    )
    a = H.entry("a", "a.jsonl", "alpaca", "sft", tmp_path, on_bad_record="skip")
    b = H.entry("b", "b.jsonl", "alpaca", "sft", tmp_path)  # listed last, policy "error"
    res = H.resolved([a, b])
    data = build_stage_data(res, H.stage("sft", ["a", "b"]), H.tokenizer(), tmp_path, tmp_path / "c",
                            template_text=refusing)  # fmt: skip
    assert len(data.train) == 2 and data.stats["datasets"]["a"]["skipped"] == 1
    assert data.stats["skipped"]["reasons"] == [
        {"dataset": "a", "file": "a.jsonl", "line": 1, "message": "chat template: TemplateRefused: no forbidden words",
         "expected": "a conversation the template accepts"}
    ]  # fmt: skip
    with pytest.raises(BadRecord, match=r"^a.jsonl:1: chat template: TemplateRefused"):
        build_stage_data(H.resolved([{**a, "on_bad_record": "error"}, b]), H.stage("sft", ["a", "b"]),
                         H.tokenizer(), tmp_path, tmp_path / "c", template_text=refusing)  # fmt: skip


@needs_shared
def test_worker_processes_give_the_same_rows(tmp_path):
    shutil.copy(H.SHARED / "alpaca_en_demo.json", tmp_path / "alpaca.json")  # one source root for both
    shutil.copy(H.FIXTURES / "sft_broken.jsonl", tmp_path / "broken.jsonl")
    e = H.entry("alpaca", "alpaca.json", "alpaca", "sft", tmp_path, max_samples=300, on_bad_record="skip")
    bad = H.entry("broken", "broken.jsonl", "alpaca", "sft", tmp_path, on_bad_record="skip")
    refusing = H.CHATML.replace(
        "{% for m in messages %}", "{% for m in messages %}{% if 'poem' in m['content'] %}"
        "{{ raise_exception('no poems') }}{% endif %}"
    )  # fmt: skip
    out = []
    for workers in (1, 2):
        res = H.resolved([e, bad], cutoff_len=256)
        data = build_stage_data(res, H.stage("sft", ["alpaca", "broken"]), H.tokenizer(), tmp_path,
                                tmp_path / str(workers), template_text=refusing, workers=workers,
                                batch_size=64)  # fmt: skip
        out.append((data.train.to_dict(), {k: data.stats[k] for k in ("skipped", "truncated", "tokens")}))
    assert out[0] == out[1]
    reasons = out[1][1]["skipped"]["reasons"]
    assert len(reasons) > 2 and {r["message"] for r in reasons if r["dataset"] == "alpaca"} == {
        "chat template: TemplateRefused: no poems"
    }


def test_rows_travel_back_from_workers_as_columns_and_arrive_equal():
    from tkc.runtime.data.parallel import columns_to_rows, rows_to_columns

    rng = np.random.default_rng(0)
    rows = [
        {"input_ids": rng.integers(0, 99, n).astype(np.int32), "labels": np.full(n, -100, np.int32),
         "label": n % 2, "images": [f"/d/{n}.png"] * (n % 3)}
        for n in (5, 1, 17, 3)
    ]  # fmt: skip
    packed = rows_to_columns(rows)
    assert isinstance(packed, tuple) and isinstance(packed[1][0], tuple)  # one flat array per int column
    back = columns_to_rows(packed)
    assert [r.keys() for r in back] == [r.keys() for r in rows]
    for got, want in zip(back, rows, strict=True):
        assert np.array_equal(got["input_ids"], want["input_ids"]) and got["input_ids"].dtype == np.int32
        assert np.array_equal(got["labels"], want["labels"])
        assert (got["label"], got["images"]) == (want["label"], want["images"])
    ragged = [{"input_ids": np.ones(2, np.int32)}, {"input_ids": np.ones(1, np.int32), "label": 1}]
    assert columns_to_rows(rows_to_columns(ragged)) == ragged and columns_to_rows(rows_to_columns([])) == []
