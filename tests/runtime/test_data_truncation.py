"""keep_response truncation keeps the system prompt, the tool definitions and the start of the first turn, drops
whole earlier turns before cutting inside one, and drops (and counts) rows calling a tool whose definition was cut."""

import importlib.util
import json
from pathlib import Path

import pytest

from tkc.runtime.data import build_stage_data
from tkc.runtime.data.truncation import select_prompt

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
GLAIVE = H.SHARED / "glaive_toolcall_en_demo.json"
needs_shared = pytest.mark.skipif(not GLAIVE.is_file(), reason=f"shared demo datasets not found at {GLAIVE}")


def _build(tmp_path, records, fmt="sharegpt", kind="sft", stage="sft", cutoff_len=1024, template="qwen2_5", **cols):
    if fmt == "sharegpt" and kind == "sft":
        cols = {"tools": "tools", **cols}  # as the compiler maps a tools column the data has
    (tmp_path / "d.json").write_text(json.dumps(records))
    e = H.entry("d", "d.json", fmt, kind, tmp_path, columns=cols or None)
    res = H.resolved([e], template=template, cutoff_len=cutoff_len)
    return build_stage_data(res, H.stage(stage, ["d"]), H.tokenizer(), tmp_path, tmp_path / f"cache{cutoff_len}",
                            template_text=H.template_text(template))  # fmt: skip


def test_select_prompt_drops_middle_turns_oldest_first_then_the_first_answer():
    # assistant spans (token ranges) of a 4-turn conversation; the last one is the response
    spans = [(10, 15), (25, 30), (40, 45), (55, 60)]
    idx, dropped, head = select_prompt(spans, budget=55)
    assert len(idx) == 55 and dropped == 0 and head == 10
    idx, dropped, head = select_prompt(spans, budget=40)  # user 1 + assistant 1 go: [15, 30)
    assert dropped == 1 and list(idx) == [*range(0, 15), *range(30, 55)]
    idx, dropped, _ = select_prompt(spans, budget=25)  # then user 2 + assistant 2
    assert dropped == 2 and list(idx) == [*range(0, 15), *range(45, 55)]
    idx, dropped, _ = select_prompt(spans, budget=20)  # then the first answer
    assert dropped == 3 and list(idx) == [*range(0, 10), *range(45, 55)]
    idx, dropped, head = select_prompt(spans, budget=12, header=4)  # cut inside: the start, and the header
    assert dropped == 3 and list(idx) == [*range(0, 8), *range(51, 55)] and head == 8


def test_a_long_prompt_keeps_the_system_prompt_and_the_start_of_the_first_turn(tmp_path):
    long = " ".join(["the water is long"] * 200)
    record = {"system": "You answer in one word.", "instruction": long, "input": "", "output": "What is 2+3? 5"}
    data = _build(tmp_path, [record], fmt="alpaca", cutoff_len=64, template="chatml_local", system="system")
    text = H.tokenizer().decode(data.train[0]["input_ids"])
    assert len(data.train[0]["input_ids"]) == 64
    assert text.startswith("<|im_start|>system\nYou answer in one word.<|im_end|>\n<|im_start|>user\nthe water")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\nWhat is 2+3? 5<|im_end|>\n")
    cut = data.stats["cuts"][0]
    assert cut["where"] == "d.json record 0" and cut["turns_dropped"] == 0 and cut["response_tokens_cut"] == 0
    assert cut["prompt_tokens_cut"] > 0 and cut["dropped"] is None


@needs_shared
def test_whole_earlier_turns_go_first_and_the_tools_stay(tmp_path):
    record = json.loads(GLAIVE.read_text())[0]  # human, gpt, human, function_call, observation, gpt, human, gpt
    full = _build(tmp_path, [record], cutoff_len=4096).train[0]
    n = len(full["input_ids"])
    data = _build(tmp_path, [record], cutoff_len=n - 10)
    row = data.train[0]
    text, whole = H.tokenizer().decode(row["input_ids"]), H.tokenizer().decode(full["input_ids"])
    cut = data.stats["cuts"][0]
    assert cut["turns_dropped"] == 1 and cut["response_tokens_cut"] == 0 and cut["dropped"] is None
    assert "I have chicken, bell peppers, and rice." not in text  # the dropped exchange: user 1 + its tool call
    head = whole[: whole.index("Hi, I have some ingredients")]
    assert text.startswith(head) and '"name": "search_recipes"' in head  # system and tool definitions intact
    assert text.endswith(whole[whole.rindex("<|im_start|>assistant") :])  # the response and its header
    assert data.stats["dropped_tool_defs"] == 0


@needs_shared
def test_a_row_calling_a_tool_whose_definition_was_cut_is_dropped_and_counted(tmp_path):
    record = json.loads(GLAIVE.read_text())[0]
    record = {**record, "conversations": record["conversations"][:4]}  # ends with the search_recipes call
    other = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello!"}]}
    data = _build(tmp_path, [record, other], cutoff_len=48)
    assert data.stats["rows"]["train"] == 1 and data.stats["dropped_tool_defs"] == 1
    cut = next(c for c in data.stats["cuts"] if c["where"] == "d.json record 0")
    assert cut["missing_tools"] == ["search_recipes"]
    assert cut["dropped"] == "calls search_recipes whose definition did not fit in cutoff_len"
    # with room for the tool definitions the same record trains
    assert _build(tmp_path, [record], cutoff_len=4096).stats["dropped_tool_defs"] == 0


@needs_shared
def test_preference_pairs_are_cut_alike(tmp_path):
    records = json.loads((H.SHARED / "dpo_en_demo.json").read_text())[:20]
    data = _build(tmp_path, records, kind="preference", stage="dpo", cutoff_len=96)
    assert data.stats["truncated"] > 0
    for row in data.train:
        c, r = row["chosen_input_ids"], row["rejected_input_ids"]
        assert len(c) <= 96 and len(r) <= 96
        c_start = next(i for i, lab in enumerate(row["chosen_labels"]) if lab != -100)
        r_start = next(i for i, lab in enumerate(row["rejected_labels"]) if lab != -100)
        assert list(c[:c_start]) == list(r[:r_start])  # the same prompt tokens on both sides
