"""Column/tag resolution per dataset format and kind."""

import pytest

from tkc.compiler.dataset_formats import (
    COLUMN_KEYS,
    TAG_KEYS,
    check_stage_dataset_kind,
    infer_kind,
    resolve_columns_and_tags,
)


def test_alpaca_defaults_fill_every_key():
    columns, tags = resolve_columns_and_tags("alpaca", "sft", None, None)
    assert tuple(columns) == COLUMN_KEYS and tuple(tags) == TAG_KEYS
    assert (columns["prompt"], columns["query"], columns["response"]) == ("instruction", "input", "output")
    assert columns["messages"] is None and all(v is None for v in tags.values())


def test_sharegpt_and_openai_tags():
    columns, tags = resolve_columns_and_tags("sharegpt", "sft", {"tools": "tools"}, None)
    assert columns["messages"] == "conversations" and columns["tools"] == "tools"
    assert tags == {
        "role": "from",
        "content": "value",
        "user": "human",
        "assistant": "gpt",
        "observation": "observation",
        "function": "function_call",
        "system": "system",
    }
    columns, tags = resolve_columns_and_tags("openai", "sft", None, {"user": "human"})
    assert columns["messages"] == "messages" and tags["role"] == "role" and tags["user"] == "human"
    assert tags["observation"] == "tool"


def test_kind_columns():
    columns, _ = resolve_columns_and_tags("sharegpt", "preference", {"messages": "conversations"}, None)
    assert (columns["chosen"], columns["rejected"]) == ("chosen", "rejected")
    columns, _ = resolve_columns_and_tags("sharegpt", "kto", {"messages": "messages"}, None)
    assert columns["kto_tag"] == "label"
    columns, _ = resolve_columns_and_tags("text", "text", {"text": "content"}, None)
    assert columns["text"] == "content" and columns["prompt"] is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("alpaca", "sft", {"promt": "q"}, None), "did you mean 'prompt'"),
        (("sharegpt", "sft", None, {"role_tag": "from"}), "did you mean 'role'"),
        (("sharegpd", "sft", None, None), "did you mean 'sharegpt'"),
        (("alpaca", "sft", {"messages": "m"}, None), "column 'messages' is not read by format 'alpaca'"),
        (("alpaca", "sft", {"chosen": "c"}, None), "column 'chosen' is not read"),
        (("text", "sft", None, None), "cannot hold kind"),
        (("alpaca", "sft", {"prompt": 3}, None), "must be a non-empty string"),
    ],
)
def test_bad_keys_are_named(args, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        resolve_columns_and_tags(*args)


def test_infer_kind_and_stage_check():
    assert infer_kind("text") == "text"
    assert infer_kind("sharegpt", {"chosen": "c"}) == "preference"
    assert infer_kind("alpaca", None, ranking=True) == "preference"
    assert infer_kind("sharegpt", {"kto_tag": "label"}) == "kto"
    assert infer_kind("alpaca", {}) == "sft"
    assert check_stage_dataset_kind("dpo", "d", "preference") is None
    assert "needs preference" in check_stage_dataset_kind("dpo", "d", "sft")
