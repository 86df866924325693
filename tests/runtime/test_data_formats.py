"""Every file type and record format reaches the same canonical example and the same tokens."""

import importlib.util
import json
from pathlib import Path

import pytest

from tkc.runtime.data import BadRecord, DataError, build_stage_data
from tkc.runtime.data.convert import convert_record
from tkc.runtime.data.readers import slice_bounds

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)

RECORDS = [
    {"instruction": f"What is {a}+{b}?", "input": "", "output": str(a + b)}
    for a, b in ((2, 3), (7, 1), (4, 4))
]


def _write_all(root: Path) -> dict[str, str]:
    """The same three records as json, jsonl, csv, parquet, arrow, a folder of jsonl and a save_to_disk folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "r.json").write_text(json.dumps(RECORDS))
    (root / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (root / "r.csv").write_text(
        "instruction,input,output\n" + "".join(f"{r['instruction']},,{r['output']}\n" for r in RECORDS)
    )
    table = pa.Table.from_pylist(RECORDS)
    pq.write_table(table, root / "r.parquet")
    with pa.OSFile(str(root / "r.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    (root / "dir").mkdir()
    (root / "dir" / "a.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    (root / "dir" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[1:]))
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(root / "disk"))
    return {"json": "r.json", "jsonl": "r.jsonl", "csv": "r.csv", "parquet": "r.parquet", "arrow": "r.arrow",
            "dir": "dir", "hf_disk": "disk"}  # fmt: skip


def test_every_file_type_gives_the_same_rows(tmp_path):
    paths = _write_all(tmp_path)
    tok = H.tokenizer()
    results = {}
    for label, path in paths.items():
        e = H.entry(label, path, "alpaca", "sft", tmp_path)
        res = H.resolved([e])
        data = build_stage_data(
            res, H.stage("sft", [label]), tok, tmp_path, tmp_path / "cache", template_text=H.CHATML
        )
        results[label] = sorted(tuple(r["input_ids"]) for r in data.train)
    assert H.entry("x", "disk", "alpaca", "sft", tmp_path)["file_type"] == "hf_disk"
    first = results.pop("json")
    assert len(first) == 3 and all(v == first for v in results.values()), results.keys()


def test_txt_and_text_pt(tmp_path):
    (tmp_path / "t.txt").write_text("the water is long\n\nwhat time is it\n")
    e = H.entry("t", "t.txt", "text", "text", tmp_path)
    data = build_stage_data(
        H.resolved([e], cutoff_len=4), H.stage("pt", ["t"]), H.tokenizer(), tmp_path, tmp_path / "c"
    )
    tok = H.tokenizer()
    ids = [t for r in data.train for t in r["input_ids"]]
    assert ids.count(tok.eos_token_id) == 2 and all(len(r["input_ids"]) <= 4 for r in data.train)


def test_openai_messages_with_tool_calls(tmp_path):
    rec = {
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "content": '{"temp": 20}'},
            {"role": "assistant", "content": "It is 20 degrees."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    }
    (tmp_path / "o.jsonl").write_text(json.dumps(rec) + "\n")
    e = H.entry("o", "o.jsonl", "openai", "sft", tmp_path, columns={"tools": "tools"})
    ex = convert_record(rec, e, tmp_path)
    assert ex["messages"][2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}],
    }
    assert ex["tools"] == rec["tools"]
    data = build_stage_data(
        H.resolved([e]),
        H.stage("sft", ["o"]),
        H.tokenizer(),
        tmp_path,
        tmp_path / "c",
        template_text=H.template_text("qwen2_5"),
    )
    tok = H.tokenizer()
    row = data.train[0]
    trained = tok.decode([i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
    assert (
        trained
        == '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>It is 20 degrees.<|im_end|>'
    )


def test_alpaca_history_system_and_query():
    e = {
        "format": "alpaca",
        "kind": "sft",
        "tags": {},
        "columns": dict(prompt="instruction", query="input", response="output", system="sys", history="hist"),
    }
    rec = {
        "instruction": "Add",
        "input": "1 and 2",
        "output": "3",
        "sys": "Be exact.",
        "hist": [["Hi", "Hello"]],
    }
    ex = convert_record(rec, e, Path("."))
    assert ex["messages"] == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Add\n1 and 2"},
                              {"role": "assistant", "content": "3"}]  # fmt: skip


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "", "input": "", "output": "x"}, "instruction is empty"),
        ({"instruction": "q", "input": "", "output": "x", "hist": [["only one"]]}, "history item 0"),
        ({"instruction": "q", "output": "x", "input": 3}, "column 'input' (query) is int"),
    ],
)
def test_alpaca_bad_records(record, message):
    e = {
        "format": "alpaca",
        "kind": "sft",
        "tags": {},
        "columns": dict(prompt="instruction", query="input", response="output", history="hist"),
    }
    with pytest.raises(BadRecord, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_record(record, e, Path("."))


def test_sharegpt_turn_order_is_checked():
    e = {
        "format": "sharegpt",
        "kind": "sft",
        "columns": {"messages": "conversations"},
        "tags": {
            "role": "from",
            "content": "value",
            "user": "human",
            "assistant": "gpt",
            "observation": "observation",
            "function": "function_call",
            "system": "system",
        },
    }
    rec = {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}
    with pytest.raises(BadRecord, match="turn 1 is 'user'"):
        convert_record(rec, e, Path("."))
    rec = {"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "not json"}]}
    with pytest.raises(BadRecord, match="function call is not valid JSON"):
        convert_record(rec, e, Path("."))


def test_split_slices_and_max_samples(tmp_path):
    assert list(slice_bounds("train[:2]", 5)) == [0, 1]
    assert list(slice_bounds("train[40%:]", 5)) == [2, 3, 4]
    _write_all(tmp_path)
    e = {**H.entry("j", "r.jsonl", "alpaca", "sft", tmp_path), "split": "train[1:]", "max_samples": 1}
    data = build_stage_data(
        H.resolved([e]),
        H.stage("sft", ["j"]),
        H.tokenizer(),
        tmp_path,
        tmp_path / "c",
        template_text=H.CHATML,
    )
    assert len(data.train) == 1 and "7+1" in H.tokenizer().decode(data.train[0]["input_ids"])


def test_preprocessing_batch_size_does_not_change_rows(tmp_path):
    e = H.entry("m", "data/sharegpt_multi.json", "sharegpt", "sft", H.FIXTURES.parent)
    j = H.entry("j", "data/sft_ok.jsonl", "alpaca", "sft", H.FIXTURES.parent)
    rows, hits = [], []
    for batch, cache in ((1, "a"), (1000, "b"), (7, "a")):
        res = H.resolved([e, j])
        data = build_stage_data(res, H.stage("sft", ["m", "j"]), H.tokenizer(), H.FIXTURES.parent, tmp_path / cache,
                                template_text=H.CHATML, batch_size=batch)  # fmt: skip
        rows.append(data.train.to_dict())
        hits.append(data.stats["cache_hit"])
    assert rows[0] == rows[1] == rows[2] and len(rows[0]["input_ids"]) == 5
    assert hits == [False, False, True]  # the batch size is not part of the cache key


def test_alpaca_preference_and_kto(tmp_path):
    tok = H.tokenizer()
    (tmp_path / "p.jsonl").write_text(json.dumps({"instruction": "What is 2+3?", "input": "", "chosen": "5",
                                                  "rejected": "6"}) + "\n")  # fmt: skip
    (tmp_path / "k.jsonl").write_text(json.dumps({"instruction": "What is 2+3?", "input": "", "output": "6",
                                                  "label": False}) + "\n")  # fmt: skip
    p = H.entry("p", "p.jsonl", "alpaca", "preference", tmp_path)
    k = H.entry("k", "k.jsonl", "alpaca", "kto", tmp_path)
    assert p["columns"]["response"] is None and k["columns"]["kto_tag"] == "label"
    pref = build_stage_data(H.resolved([p]), H.stage("dpo", ["p"]), tok, tmp_path, tmp_path / "c",
                            template_text=H.CHATML).train[0]  # fmt: skip
    for side, answer in (("chosen", "5"), ("rejected", "6")):
        ids, labels = pref[f"{side}_input_ids"], pref[f"{side}_labels"]
        assert (
            tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
            == answer + "<|im_end|>"
        )
    kto = build_stage_data(H.resolved([k]), H.stage("kto", ["k"]), tok, tmp_path, tmp_path / "c",
                           template_text=H.CHATML).train[0]  # fmt: skip
    assert kto["label"] == 0 and tok.decode(kto["input_ids"]).endswith("assistant\n6<|im_end|>\n")
    with pytest.raises(DataError, match="needs preference datasets"):
        build_stage_data(
            H.resolved([k]), H.stage("dpo", ["k"]), tok, tmp_path, tmp_path / "c", template_text=H.CHATML
        )


def test_hub_entry_reads_the_local_cache_and_keys_on_content(tmp_path):
    # a folder id goes through the same `datasets.load_dataset` path as a hub id, offline
    hub = tmp_path / "hub_like"
    hub.mkdir()
    (hub / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    columns, tags = H.resolve_columns_and_tags("alpaca", "sft", None, None)
    e = {"name": "h", "source": "hub", "path": str(hub), "revision": None, "file_type": "hub", "files": [],
         "format": "alpaca", "kind": "sft", "columns": columns, "tags": tags, "split": "train",
         "max_samples": None, "weight": 1.0, "on_bad_record": "error"}  # fmt: skip

    def build():
        return build_stage_data(H.resolved([e]), H.stage("sft", ["h"]), H.tokenizer(), tmp_path, tmp_path / "c",
                                template_text=H.CHATML)  # fmt: skip

    first = build()
    assert len(first.train) == 3 and not first.stats["cache_hit"] and build().stats["cache_hit"]
    (hub / "train.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    assert len(build().train) == 1  # changed content, same id: a cache miss
    with pytest.raises(DataError, match="cannot load"):
        build_stage_data(H.resolved([{**e, "path": str(tmp_path / "absent")}]), H.stage("sft", ["h"]),
                         H.tokenizer(), tmp_path, tmp_path / "c", template_text=H.CHATML)  # fmt: skip
