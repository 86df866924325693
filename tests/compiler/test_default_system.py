"""`template.default_system` tells the truth: the system prompt a template inserts when a conversation has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tkc.catalog.registry import families, template_text, templates
from tkc.compiler import compile_recipe
from tkc.compiler.passes.resolve_chat_template import probe_default_system

PAIRS = sorted({(fid, ref.template) for fid, fam in families().items() for ref in fam.hub_models.values()})


def _recipe(root: Path, family: str, tid: str, template: str) -> Path:
    fam, meta = families()[family], templates()[tid]
    (root / "model").mkdir(exist_ok=True)
    (root / "model" / "config.json").write_text(json.dumps({"model_type": fam.model_types[0],
                                                            "architectures": fam.architectures[:1]}))
    (root / "model" / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": meta.bos_token or None, "eos_token": meta.eos_token, "chat_template": template_text(tid)}))
    (root / "d.jsonl").write_text('{"instruction": "q", "input": "", "output": "a"}\n')
    recipe = root / f"r-{template}.yaml"
    recipe.write_text(f"name: t\nmodel: {{path: model}}\ntemplate: {template}\n"
                      "data: {datasets: {d: {path: d.jsonl}}}\nstages: [{kind: sft}]\n")
    return recipe


@pytest.mark.parametrize(("family", "tid"), PAIRS, ids=[f"{f}-{t}" for f, t in PAIRS])
def test_auto_finds_the_default_system_the_named_template_declares(tmp_path, family, tid):
    auto = compile_recipe(_recipe(tmp_path, family, tid, "auto"))
    named = compile_recipe(_recipe(tmp_path, family, tid, tid))
    assert auto.resolved["template"]["default_system"] == named.resolved["template"]["default_system"]
    assert auto.plan.provenance["template.default_system"] == "derived:resolve_chat_template:render_probe"
    assert named.plan.provenance["template.default_system"] == f"template:{tid}"


def test_qwen2_5_tokenizer_template_inserts_its_default_system(tmp_path):
    auto = compile_recipe(_recipe(tmp_path, "qwen2", "qwen2_5", "auto"))
    assert auto.resolved["template"]["default_system"] == \
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.mark.parametrize("tid", sorted(templates()))
def test_catalog_default_system_is_what_the_template_renders(tid):
    meta = templates()[tid]
    found = probe_default_system(template_text(tid), meta.bos_token, meta.eos_token, **meta.render_kwargs)
    assert found == meta.default_system
