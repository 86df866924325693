"""`template: auto` (the tokenizer's own template) resolves like the named catalog template for every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tkc.catalog.chat import assistant_spans
from tkc.catalog.registry import families, template_text, templates
from tkc.compiler import compile_recipe
from tkc.compiler.passes.resolve_chat_template import probe_default_system

PAIRS = sorted({(fid, ref.template) for fid, fam in families().items() for ref in fam.hub_models.values()})
RENDERS_UNSEEN_SYSTEM = {"openchat"}
# The catalog says no tools where the vendor template lists them but drops the calls and results a conversation
# makes (tests/catalog/test_cases.py TOOLS_LISTED_CALLS_DROPPED): the probe only sees the listing.
TOOLS_LISTED_CALLS_DROPPED = {"glm4_0414"}
CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]


def _model_dir(root: Path, family: str, tid: str, with_template: bool) -> Path:
    fam, meta = families()[family], templates()[tid]
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": fam.model_types[0],
                                                   "architectures": fam.architectures[:1]}))
    tok = {"bos_token": meta.bos_token or None, "eos_token": meta.eos_token}
    if with_template:
        tok["chat_template"] = template_text(tid)
    (model / "tokenizer_config.json").write_text(json.dumps(tok))
    return model


def _recipe(root: Path, template: str) -> Path:
    (root / "d.jsonl").write_text('{"instruction": "q", "input": "", "output": "a"}\n')
    recipe = root / f"r-{template}.yaml"
    recipe.write_text(f"name: t\nmodel: {{path: model}}\ntemplate: {template}\n"
                      "data: {datasets: {d: {path: d.jsonl}}}\nstages: [{kind: sft}]\n")
    return recipe


@pytest.mark.parametrize(("family", "tid"), PAIRS, ids=[f"{f}-{t}" for f, t in PAIRS])
def test_auto_matches_named_template(tmp_path, family, tid):
    _model_dir(tmp_path, family, tid, with_template=True)
    auto_bundle, named_bundle = compile_recipe(_recipe(tmp_path, "auto")), compile_recipe(_recipe(tmp_path, tid))
    auto, named = auto_bundle.resolved["template"], named_bundle.resolved["template"]
    assert auto["id"] == "auto" and named["id"] == tid
    path = "template/chat_template.jinja"
    assert auto_bundle.files[path] == named_bundle.files[path]
    for key in ("supports_tools", "bos_token", "eos_token", "default_system"):
        if key == "supports_tools" and tid in TOOLS_LISTED_CALLS_DROPPED:
            assert (auto[key], named[key]) == (True, False)
            continue
        assert auto[key] == named[key], key
    # auto finds the default system prompt by rendering probes; the named template declares it
    assert auto_bundle.plan.provenance["template.default_system"] == "derived:resolve_chat_template:render_probe"
    assert named_bundle.plan.provenance["template.default_system"] == f"template:{tid}"
    # The catalog may forbid a system turn the vendor template still renders (a role the model never saw).
    expected_system = True if tid in RENDERS_UNSEEN_SYSTEM else named["supports_system"]
    assert auto["supports_system"] == expected_system
    assert named["eos_token"] in auto["stop_tokens"]
    kw = {"bos_token": named["bos_token"], "eos_token": named["eos_token"], **named["render_kwargs"]}
    text, spans = assistant_spans(template_text(tid), CONVERSATION, **kw)
    assert [CONVERSATION[i]["content"] in text[a:b] for a, b, i in spans] == [True, True]


def test_without_a_tokenizer_template_auto_uses_the_family_default(tmp_path):
    _model_dir(tmp_path, "qwen2", "qwen2_5", with_template=False)
    resolved = compile_recipe(_recipe(tmp_path, "auto")).resolved["template"]
    assert resolved["id"] == families()["qwen2"].template


def test_qwen2_5_tokenizer_template_inserts_its_default_system(tmp_path):
    _model_dir(tmp_path, "qwen2", "qwen2_5", with_template=True)
    auto = compile_recipe(_recipe(tmp_path, "auto"))
    assert auto.resolved["template"]["default_system"] == \
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.mark.parametrize("tid", sorted(templates()))
def test_catalog_default_system_is_what_the_template_renders(tid):
    meta = templates()[tid]
    found = probe_default_system(template_text(tid), meta.bos_token, meta.eos_token, **meta.render_kwargs)
    assert found == meta.default_system
