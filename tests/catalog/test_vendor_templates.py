"""Catalog templates equal the vendors' own chat_template strings (vendor_templates.json) and render alike.

The vendor strings were copied verbatim from public repositories that quote or vendor the model's
tokenizer_config.json (each entry names repository, path and commit). The expected text comes from
transformers' `render_jinja_template` (what `apply_chat_template` calls) on the vendor string; tkc's renderer
runs on the catalog template.
"""

import json
from pathlib import Path

import pytest
from chat_conversations import TOOLS, assistant, cases_for, system, user

from tkc.catalog.chat import TemplateRefused, load_template, render

_HERE = Path(__file__).parent
# vendor_templates.json holds the first entries; every later template has its own file, vendor/<template_id>.json,
# of the same shape plus optional "extra_cases" ({name: {messages, tools, add_generation_prompt, extra}}) that reach
# branches the common conversations do not
VENDOR = json.loads((_HERE / "vendor_templates.json").read_text(encoding="utf-8"))["templates"]
for _path in sorted((_HERE / "vendor").glob("*.json")):
    assert _path.stem not in VENDOR, f"{_path.stem}: in vendor_templates.json and vendor/"
    VENDOR[_path.stem] = json.loads(_path.read_text(encoding="utf-8"))

# Conversations that reach template branches the common set does not: GLM-4 reads tools from a message's
# own 'tools' field (its system preamble names the assistant) and prints a message's 'metadata'.
EXTRA = {
    "glm4": {
        "message_tools": {
            "messages": [
                {"role": "system", "content": "", "tools": TOOLS},
                user("What's the weather in Paris?"),
            ],
            "tools": None,
            "add_generation_prompt": True,
            "extra": {},
        },
        "metadata": {
            "messages": [user("Hi"), {"role": "assistant", "content": "Hello!", "metadata": "m1"}],
            "tools": None,
            "add_generation_prompt": False,
            "extra": {},
        },
    },
    "yi1_5": {
        "system_then_turns": {
            "messages": [system("Be brief."), user("Hi!"), assistant("Hello!"), user("Bye.")],
            "tools": None,
            "add_generation_prompt": False,
            "extra": {},
        }
    },
}


def _cases(template_id: str) -> dict[str, dict]:
    _, meta = load_template(template_id)
    return {**cases_for(meta), **EXTRA.get(template_id, {}), **VENDOR[template_id].get("extra_cases", {})}


PAIRS = [(t, name) for t in sorted(VENDOR) for name in _cases(t)]


def _vendor_render(template_id: str, case: dict) -> str | Exception:
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    spec = VENDOR[template_id]
    try:
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[case["messages"]],
            tools=case["tools"],
            chat_template=spec["chat_template"],
            add_generation_prompt=case["add_generation_prompt"],
            bos_token=spec["bos_token"],
            eos_token=spec["eos_token"],
            **case["extra"],
        )
    except Exception as exc:  # the vendor template refuses or crashes: tkc must fail too
        return exc
    return rendered[0]


def test_entries_name_their_origin():
    for template_id, spec in VENDOR.items():
        assert spec["model"] and spec["chat_template"], template_id
        for src in spec["sources"]:
            assert src["repo"].count("/") == 1 and src["path"], (template_id, src)
            assert len(src["commit"]) == 40 and int(src["commit"], 16) >= 0, (template_id, src)


@pytest.mark.parametrize("template_id", sorted(VENDOR))
def test_catalog_text_is_the_vendor_text(template_id):
    text, meta = load_template(template_id)
    assert text == VENDOR[template_id]["chat_template"]
    if (_HERE / "vendor" / f"{template_id}.json").exists():  # the data file names the pinned copy it came from
        pinned = {(s["repo"], s["path"], s["commit"]) for s in VENDOR[template_id]["sources"]}
        assert (meta["vendor"]["repo"], meta["vendor"]["path"], meta["vendor"]["commit"]) in pinned
        assert meta["vendor"]["model"] == VENDOR[template_id]["model"].split(" ")[0]
    else:
        assert "vendor_templates.json" in meta["source"]


@pytest.mark.parametrize("template_id", sorted(VENDOR))
def test_bos_token_is_the_vendor_tokenizers(template_id):
    """The catalog's bos_token is what the vendor tokenizer substitutes for {{ bos_token }}."""
    _, meta = load_template(template_id)
    if "bos_token" in VENDOR[template_id]["chat_template"]:
        assert meta["bos_token"] == VENDOR[template_id]["bos_token"]


@pytest.mark.parametrize(("template_id", "name"), PAIRS, ids=[f"{t}/{n}" for t, n in PAIRS])
def test_renders_like_the_vendor_template(template_id, name):
    case = _cases(template_id)[name]
    expected = _vendor_render(template_id, case)
    text, _ = load_template(template_id)
    spec = VENDOR[template_id]
    kwargs = {
        "tools": case["tools"],
        "add_generation_prompt": case["add_generation_prompt"],
        "bos_token": spec["bos_token"],
        "eos_token": spec["eos_token"],
        **case["extra"],
    }
    if isinstance(expected, Exception):
        refused = "TemplateError" in type(expected).__name__
        with pytest.raises(TemplateRefused if refused else Exception):
            render(text, case["messages"], **kwargs)
        return
    assert render(text, case["messages"], **kwargs) == expected


def test_glm4_names_the_assistant_chatglm():
    """The vendor text pinned here names the assistant ChatGLM in its tools preamble (tkc had GLM-4)."""
    text, _ = load_template("glm4")
    case = EXTRA["glm4"]["message_tools"]
    out = render(text, case["messages"], tools=None, add_generation_prompt=True, bos_token="", eos_token="")
    assert out.startswith("[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。")
    assert out.endswith("<|user|>\nWhat's the weather in Paris?<|assistant|>")


def test_yi1_5_differs_from_first_generation_yi_on_system_messages():
    """Yi-1.5 prints a system message as bare text; Yi (ChatML) wraps it in a system turn."""
    msgs = [system("Be brief."), user("Hi!")]
    new = render(load_template("yi1_5")[0], msgs, add_generation_prompt=True)
    old = render(load_template("yi")[0], msgs, add_generation_prompt=True)
    assert new == "Be brief.<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    assert (
        old
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
