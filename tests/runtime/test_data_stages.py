"""Runtime data for dpo/rm, kto and pt stages on the shared demo files, with real label masks."""

import importlib.util
import json
from pathlib import Path

import pytest

from tkc.runtime.data import build_stage_data, collate

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
pytestmark = pytest.mark.skipif(not H.SHARED.is_dir(), reason=f"shared demo datasets not found at {H.SHARED}")
IM_END = "<|im_end|>"


def _build(tmp_path, entry, kind, **data):
    res = H.resolved([entry], **data)
    return build_stage_data(
        res,
        H.stage(kind, [entry["name"]]),
        H.tokenizer(),
        H.SHARED,
        tmp_path / "cache",
        template_text=H.template_text("qwen2_5"),
    )


def _trained(ids, labels) -> list[int]:
    return [i for i, lab in zip(ids, labels, strict=True) if lab != -100]


def _prompt(ids, labels) -> list[int]:
    first = next(k for k, lab in enumerate(labels) if lab != -100)
    return ids[:first]


@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_preference_pairs(tmp_path, kind):
    tok = H.tokenizer()
    n = 300 if kind == "dpo" else 40
    e = H.entry("dpo", "dpo_en_demo.json", "sharegpt", "preference", H.SHARED, max_samples=n)
    data = _build(tmp_path, e, kind, cutoff_len=100_000)
    records = json.loads((H.SHARED / "dpo_en_demo.json").read_text())[:n]
    assert len(data.train) == len(records) and data.stats["truncated"] == 0
    by_chosen = {
        tuple(tok.encode(r["chosen"]["value"] + IM_END, add_special_tokens=False)): r for r in records
    }
    for row in data.train:
        chosen = _trained(row["chosen_input_ids"], row["chosen_labels"])
        record = by_chosen[tuple(chosen)]
        rejected = _trained(row["rejected_input_ids"], row["rejected_labels"])
        assert rejected == tok.encode(record["rejected"]["value"] + IM_END, add_special_tokens=False)
        prompt = _prompt(row["chosen_input_ids"], row["chosen_labels"])
        assert prompt == _prompt(row["rejected_input_ids"], row["rejected_labels"])
        assert tok.decode(prompt).endswith(
            record["conversations"][-1]["value"] + "<|im_end|>\n<|im_start|>assistant\n"
        )
    batch = collate([data.train[0], data.train[1]], pad_id=tok.pad_token_id)
    assert set(batch) == {
        f"{s}_{c}" for s in ("chosen", "rejected") for c in ("input_ids", "labels", "attention_mask")
    }


def test_preference_truncation_keeps_prompts_equal(tmp_path):
    e = H.entry("dpo", "dpo_en_demo.json", "sharegpt", "preference", H.SHARED, max_samples=40)
    data = _build(tmp_path, e, "dpo", cutoff_len=128)
    assert data.stats["truncated"] > 0
    for row in data.train:
        assert len(row["chosen_input_ids"]) <= 128 and len(row["rejected_input_ids"]) <= 128
        assert _prompt(row["chosen_input_ids"], row["chosen_labels"]) == _prompt(
            row["rejected_input_ids"], row["rejected_labels"]
        )


def test_kto_labels(tmp_path):
    tok = H.tokenizer()
    e = H.entry(
        "kto",
        "kto_en_demo.json",
        "sharegpt",
        "kto",
        H.SHARED,
        columns={"messages": "messages"},
        tags={"role": "role", "content": "content", "user": "user", "assistant": "assistant"},
    )
    data = _build(tmp_path, e, "kto", cutoff_len=100_000)
    records = json.loads((H.SHARED / "kto_en_demo.json").read_text())
    assert len(data.train) == len(records)
    want = {
        tuple(tok.encode(r["messages"][-1]["content"] + IM_END, add_special_tokens=False)): r["label"]
        for r in records
    }
    assert sorted(r["label"] for r in data.train) == sorted(int(r["label"]) for r in records)
    for row in data.train:
        assert want[tuple(_trained(row["input_ids"], row["labels"]))] == bool(row["label"])
    assert collate([data.train[0], data.train[1]], pad_id=0)["label"].shape == (2,)


def test_c4_text_chunking(tmp_path):
    tok = H.tokenizer()
    e = H.entry("c4", "c4_demo.jsonl", "text", "text", H.SHARED, max_samples=50)
    data = _build(tmp_path, e, "pt", cutoff_len=256)
    texts = [json.loads(line)["text"] for line in (H.SHARED / "c4_demo.jsonl").read_text().splitlines()[:50]]
    stream = [t for text in texts for t in tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]]
    rows = list(data.train)
    assert all(len(r["input_ids"]) == 256 for r in rows[:-1]) and 1 < len(rows[-1]["input_ids"]) <= 256
    # every document appears once, whole, in mixing order: the multiset of tokens is the same
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(stream)
    assert sum(r["input_ids"].count(tok.eos_token_id) for r in rows) == sum(
        s == tok.eos_token_id for s in stream
    )
    assert all(r["labels"] == r["input_ids"] for r in rows)
