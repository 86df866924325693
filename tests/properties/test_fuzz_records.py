"""Fuzzed dataset records, every supported format: each becomes a training row or a positioned bad record, never
another exception (converter, renderer, tokenizer and the compile-time probe's shape check alike)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tkc.bundle.chat import ChatTemplate
from tkc.compiler.dataset_formats import column_checks
from tkc.compiler.datasets_probe import _check_record
from tkc.runtime.data.build import _BadRecords, _convert
from tkc.runtime.data.encode import Counters, EncodeOptions, encode_pairwise, encode_sft
from tkc.runtime.data.errors import Where

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)

# format, dataset kind, stage kind
CASES = [("alpaca", "sft", "sft"), ("sharegpt", "sft", "sft"), ("openai", "sft", "sft"),
         ("sharegpt", "preference", "dpo"), ("alpaca", "preference", "dpo"), ("openai", "kto", "kto"),
         ("text", "text", "pt")]  # fmt: skip
WORDS = ["", "hi", "What is 2+3?", "5", "<|im_end|>", "{", '{"name": "f", "arguments": {}}', "true", "ü💥", " "]
KEYS = ["instruction", "input", "output", "system", "history", "tools", "conversations", "messages", "chosen",
        "rejected", "label", "text", "images", "from", "value", "role", "content", "type", "name", "arguments",
        "function", "tool_calls", "reasoning_content", "thinking", "input_text", "summary", "id"]  # fmt: skip
ROLES = ["user", "assistant", "system", "tool", "function_call", "human", "gpt", "observation", "bot"]
PART_TYPES = ["text", "output_text", "reasoning", "thinking", "tool_use", "function_call", "image_url", "video"]

leaf = st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=False, width=16) | st.sampled_from(WORDS)
json_value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(KEYS), c,
                                                                                         max_size=3), max_leaves=8)
part = st.fixed_dictionaries({"type": st.sampled_from(PART_TYPES)},
                             optional={k: json_value | st.sampled_from(WORDS) for k in
                                       ("text", "thinking", "name", "arguments", "input", "function", "summary")})
content = st.sampled_from(WORDS) | st.lists(part | st.sampled_from(WORDS), max_size=3) | json_value


def _message(role_key: str, content_key: str):
    return st.fixed_dictionaries({role_key: st.sampled_from(ROLES) | json_value, content_key: content},
                                 optional={"tool_calls": json_value, "reasoning_content": leaf})


TEXT = st.sampled_from(WORDS[1:])
GOOD_PARTS = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), min_size=1, max_size=2)
CALL = st.fixed_dictionaries({"type": st.just("tool_use"), "name": st.just("f"), "input": st.just({"x": 1})})
REASONING = st.fixed_dictionaries({"type": st.just("reasoning"), "text": TEXT})


def _turn(fmt: str, role: str):
    rk, ck = ("from", "value") if fmt == "sharegpt" else ("role", "content")
    tag = {"user": "human", "assistant": "gpt"}[role] if fmt == "sharegpt" else role
    body = TEXT if fmt == "sharegpt" else TEXT | GOOD_PARTS
    if fmt == "openai" and role == "assistant":
        body = body | st.lists(REASONING | CALL, min_size=1, max_size=2).map(lambda p: [*p, {"type": "text", "text": "ok"}])
    return st.fixed_dictionaries({rk: st.just(tag), ck: body})


def _valid(fmt: str, kind: str):
    """Records that convert (mostly): the shape the format expects, with varied text, parts and tool calls."""
    if fmt == "text":
        return st.fixed_dictionaries({"text": TEXT})
    if fmt == "alpaca":
        fields = {"instruction": TEXT, **({"chosen": TEXT, "rejected": TEXT} if kind == "preference" else {"output": TEXT})}
        return st.fixed_dictionaries(fields, optional={"input": TEXT, "system": TEXT,
                                                       "history": st.lists(st.tuples(TEXT, TEXT).map(list), max_size=2)})
    pair = st.tuples(_turn(fmt, "user"), _turn(fmt, "assistant"))
    turns = st.lists(pair, min_size=1, max_size=3).map(lambda ps: [m for p in ps for m in p])
    key = "conversations" if fmt == "sharegpt" else "messages"
    if kind == "preference":
        return st.fixed_dictionaries({key: turns.map(lambda t: t[:-1]), "chosen": _turn(fmt, "assistant"),
                                      "rejected": _turn(fmt, "assistant")})
    fields = {key: turns, **({"label": st.booleans()} if kind == "kto" else {})}
    return st.fixed_dictionaries(fields, optional={"tools": st.just('[{"name": "f", "parameters": {}}]')})


def _mutated(fmt: str, kind: str):
    """A valid record with one key replaced by junk or removed, or one message replaced by a fuzzed one."""
    msg = _message("from", "value") if fmt == "sharegpt" else _message("role", "content")

    def mutate(args):
        record, key_index, junk, action = args
        record = dict(record)
        key = sorted(record)[key_index % len(record)]
        if action == 0:
            del record[key]
        elif action == 1 and isinstance(record[key], list) and record[key]:
            record[key] = [junk if i == key_index % len(record[key]) else m for i, m in enumerate(record[key])]
        else:
            record[key] = junk
        return record

    junk = json_value | msg | content
    return st.tuples(_valid(fmt, kind), st.integers(0, 7), junk, st.integers(0, 2)).map(mutate)


def _record(fmt: str, kind: str):
    return _valid(fmt, kind) | _mutated(fmt, kind) | _mutated(fmt, kind) | json_value


def _entry(fmt: str, kind: str) -> dict:
    cols, tags = H.resolve_columns_and_tags(fmt, kind, {"tools": "tools"} if fmt != "text" else None, None)
    return {"name": "d", "format": fmt, "kind": kind, "columns": cols, "tags": tags, "on_bad_record": "skip",
            "file_type": "jsonl"}  # fmt: skip


def _rows(stage_kind: str, items: list, bad) -> tuple[list, Counters]:
    tok, counters = H.tokenizer(), Counters()
    chat, opts = ChatTemplate(H.template_text("qwen3"), "", "<|im_end|>"), EncodeOptions(64)
    if stage_kind == "pt":
        return items, counters
    if stage_kind == "dpo":
        return encode_pairwise(items, tok, chat, opts, bad, counters), counters
    return encode_sft(items, tok, chat, opts, bad, counters, kto=stage_kind == "kto"), counters


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_every_record_becomes_a_row_or_a_positioned_error(case):
    fmt, kind, stage_kind = case
    entry = _entry(fmt, kind)
    shapes = column_checks(entry["columns"], fmt, entry["tags"])

    @settings(max_examples=200, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(st.lists(_record(fmt, kind), min_size=1, max_size=4))
    def check(records):
        raw = [(Where("d.jsonl", i + 1, True, "d"), r) for i, r in enumerate(records)]
        for _, r in raw:
            _check_record(r, entry["columns"], shapes)  # the compile-time probe never raises either
        bad = _BadRecords([entry])
        items = _convert(entry, raw, Path("."), bad)
        rows, counters = _rows(stage_kind, items, bad)
        lines = [r["line"] for r in bad.reasons]
        assert all(r["file"] == "d.jsonl" and r["message"] for r in bad.reasons)
        assert len(set(lines)) == len(lines) or stage_kind == "dpo"  # dpo renders each side: one record, two
        reported = len(set(lines))
        assert len(rows) + reported + counters.dropped_no_labels + counters.dropped_tool_defs >= len(records) or \
            stage_kind == "pt"  # fmt: skip

    check()
