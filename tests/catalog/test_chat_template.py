"""tkc.bundle.chat: the renderer below compiler and runtime, and ChatTemplate, the one description of a bundle's
template that training data and inference render with."""

from __future__ import annotations

import subprocess
import sys

import attrs
import pytest

from tkc.bundle.chat import RENDERER_VERSION, ChatTemplate, assistant_spans, plan_stop_tokens, render
from tkc.catalog.chat import load_template

MESSAGES = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_renderer_needs_neither_catalog_nor_compiler():
    code = ("import sys, tkc.bundle.chat\n"
            "print(sorted(m for m in sys.modules if m.startswith(('tkc.catalog', 'tkc.compiler', 'tkc.schema'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert isinstance(RENDERER_VERSION, int)


def test_chat_template_from_the_typed_plan_renders_like_the_renderer():
    from tkc.bundle.plan import ResolvedTemplate, structure_plan
    from tkc.compiler import compile_recipe

    template = structure_plan(compile_recipe("recipes/demo.yaml").resolved).template
    assert isinstance(template, ResolvedTemplate)
    text, _ = load_template("qwen2_5")
    chat = ChatTemplate.from_plan(template, text)
    assert chat.stop_tokens == ("<|im_end|>",) == plan_stop_tokens(template)
    assert chat.prompt(MESSAGES[:1]) == render(text, MESSAGES[:1], add_generation_prompt=True,
                                               eos_token="<|im_end|>")  # fmt: skip
    assert chat.spans(MESSAGES) == assistant_spans(text, MESSAGES, eos_token="<|im_end|>")
    rendered, [(start, end, turn)] = chat.spans(MESSAGES)
    assert rendered[start:end] == "4<|im_end|>" and turn == 1


def test_eos_falls_back_to_the_tokenizer_in_one_place():
    text, _ = load_template("qwen2_5")
    assert ChatTemplate.from_plan(None, text, tokenizer_eos="</s>").eos_token == "</s>"
    from tkc.bundle.plan import ResolvedTemplate

    plan = ResolvedTemplate(id="t", source="catalog", file="template/chat_template.jinja", bos_token="", eos_token="",
                            stop_tokens=(), supports_system=True, supports_tools=False, default_system=None,
                            render_kwargs={})  # fmt: skip
    assert ChatTemplate.from_plan(plan, text, tokenizer_eos="</s>").eos_token == "</s>"
    named = attrs.evolve(plan, eos_token="<|im_end|>")
    assert ChatTemplate.from_plan(named, text, tokenizer_eos="</s>").eos_token == "<|im_end|>"
    with pytest.raises(AttributeError):  # no plain-dict path (with defaults of its own) any more
        ChatTemplate.from_plan({"eos_token": "<|im_end|>"}, text)  # type: ignore[arg-type]
    assert plan_stop_tokens(None) == ()
