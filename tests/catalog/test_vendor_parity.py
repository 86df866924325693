"""Parity: catalog templates render the vendors' own expected text (vendor_renderings.json) byte for byte."""

import json
from pathlib import Path

import pytest

from tkc.catalog.chat import TemplateRefused, load_template, render

VENDOR = json.loads((Path(__file__).parent / "vendor_renderings.json").read_text(encoding="utf-8"))
# vendor family (as named in vendor_renderings.json) -> catalog template id
FAMILY_TEMPLATE = {
    "llama2-chat": "llama2",
    "llama3-instruct": "llama3",
    "qwen2-instruct": "qwen",
    "mistral-7b-instruct-v0.1": "mistral_v1",
    "gemma2-it": "gemma",
    "phi3-mini": "phi3",
    "deepseek-v2-chat": "deepseek",
    "chatglm3": "chatglm3",
    "zephyr": "zephyr",
    "command-r": "command_r",
    "granite3-instruct": "granite3",
}
CASES = [(fam, name) for fam, spec in VENDOR["families"].items() for name in spec["cases"]]


def test_every_vendor_family_is_mapped():
    assert set(FAMILY_TEMPLATE) == set(VENDOR["families"])


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}/{c}" for f, c in CASES])
def test_vendor_rendering(family, case):
    spec = VENDOR["families"][family]
    c = spec["cases"][case]
    text, _ = load_template(FAMILY_TEMPLATE[family])
    kw = {
        "tools": c.get("tools"),
        "add_generation_prompt": c["add_generation_prompt"],
        "bos_token": spec["bos_token"] or "",
        "eos_token": spec["eos_token"] or "",
    }
    if isinstance(c["expected"], dict):  # the vendor template refuses: {"error": "TemplateError: <reason>"}
        with pytest.raises(TemplateRefused) as exc:
            render(text, c["messages"], **kw)
        assert c["expected"]["error"] == f"TemplateError: {exc.value.reason}"
    else:
        assert render(text, c["messages"], **kw) == c["expected"]
