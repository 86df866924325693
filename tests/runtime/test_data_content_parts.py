"""OpenAI-style messages whose content is a list of parts: text joined, reasoning and tool calls kept, media refused."""

import importlib.util
import json
from pathlib import Path

import pytest

from tkc.compiler.dataset_formats import CONTENT_PART_TYPES
from tkc.runtime.data import BadRecord, build_stage_data
from tkc.runtime.data.convert import convert_record
from tkc.runtime.data.parts import PART_TYPES

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


def _entry(fmt="openai", kind="sft"):
    cols, tags = H.resolve_columns_and_tags(fmt, kind, None, None)
    return {"format": fmt, "kind": kind, "columns": cols, "tags": tags}


def _parts_record():
    return {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]},
        {"role": "assistant", "content": [{"type": "reasoning", "text": "2 plus 3 is 5."},
                                          {"type": "output_text", "text": "5"}]},
    ]}  # fmt: skip


def test_text_parts_joined_reasoning_to_its_field():
    ex = convert_record(_parts_record(), _entry(), Path("."))
    assert [m["content"] for m in ex["messages"]] == ["Be brief.", "What is 2+3?", "5"]
    assert ex["messages"][2]["reasoning_content"] == "2 plus 3 is 5."
    assert "reasoning_content" not in ex["messages"][1]


def test_tool_call_parts_become_tool_calls():
    record = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "function_call", "name": "clock", "arguments": '{"tz": "CET"}'}]},
        {"role": "tool", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "assistant", "content": "Sunny."},
    ]}  # fmt: skip
    ex = convert_record(record, _entry(), Path("."))
    calls = ex["messages"][1]["tool_calls"]
    assert [c["function"] for c in calls] == [{"name": "weather", "arguments": {"city": "Paris"}},
                                              {"name": "clock", "arguments": {"tz": "CET"}}]  # fmt: skip
    assert ex["messages"][1]["content"] == "" and ex["messages"][2]["content"] == "sunny"


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "x.png"}},
                                  {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                                  {"text": "no type"}, 7])  # fmt: skip
def test_unsupported_parts_are_bad_records(part):
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]},
                           {"role": "assistant", "content": "yo"}]}  # fmt: skip
    with pytest.raises(BadRecord, match="message 0 content part 1"):
        convert_record(record, _entry(), Path("."))


def test_reasoning_on_a_user_turn_is_refused():
    record = {"messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "hm"}]},
                           {"role": "assistant", "content": "yo"}]}  # fmt: skip
    with pytest.raises(BadRecord, match="carries reasoning"):
        convert_record(record, _entry(), Path("."))


def test_probe_and_runtime_know_the_same_part_types():
    assert set(CONTENT_PART_TYPES) == set(PART_TYPES)


def _write(tmp_path, records) -> dict:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return H.entry("d", "d.jsonl", "openai", "sft", tmp_path)


def _rows(tmp_path, entry, template: str):
    res = H.resolved([entry], template=template)
    data = build_stage_data(res, H.stage("sft", ["d"]), H.tokenizer(), tmp_path, tmp_path / "cache",
                            template_text=H.template_text(template))  # fmt: skip
    return list(data.train)


def test_parts_render_like_string_content_with_the_reasoning_in_qwen3(tmp_path):
    plain = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
                          {"role": "assistant", "content": "<think>\n2 plus 3 is 5.\n</think>\n\n5"}]}  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    parts = _rows(tmp_path / "a", _write(tmp_path / "a", [_parts_record()]), "qwen3")
    strings = _rows(tmp_path / "b", _write(tmp_path / "b", [plain]), "qwen3")
    assert [list(r["input_ids"]) for r in parts] == [list(r["input_ids"]) for r in strings]
    assert [list(r["labels"]) for r in parts] == [list(r["labels"]) for r in strings]
    text = H.tokenizer().decode(parts[0]["input_ids"])
    assert "What is 2+3?" in text and "<think>\n2 plus 3 is 5.\n</think>" in text


def test_reasoning_with_a_template_that_cannot_render_it_is_a_positioned_error(tmp_path):
    entry = _write(tmp_path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                              _parts_record()])  # fmt: skip
    with pytest.raises(BadRecord, match=r"d\.jsonl:2: message 2 carries reasoning, but the chat template"):
        _rows(tmp_path, entry, "chatml_local")


def test_probe_reports_media_parts_at_their_line(tmp_path):
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
                        {"role": "assistant", "content": "yo"}]}  # fmt: skip
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (ok, bad, _parts_record())))
    cols, tags = H.resolve_columns_and_tags("openai", "sft", None, None)
    probe = H.probe_dataset(tmp_path / "d.jsonl", None, cols, "openai", "sft", tags=tags, root=tmp_path)
    assert [(p.file, p.line) for p in probe.problems] == [("d.jsonl", 2)]
    assert "content part 0 has unsupported type 'image_url'" in probe.problems[0].message
