"""Catalog registration: template pairs, ids, metadata fields, families (unique model_types, existing templates)."""

import re
from pathlib import Path

import pytest
import yaml

from tkc.catalog import chat
from tkc.catalog.chat import list_templates, load_template

CATALOG = Path(chat.__file__).parent
FAMILIES = {
    p.stem: yaml.safe_load(p.read_text(encoding="utf-8"))
    for p in sorted((CATALOG / "families").glob("*.yaml"))
}
# Remote-code families: their model_type/architecture are not transformers classes
REMOTE_CODE = {"chatglm", "internlm2", "baichuan"}
META_KEYS = {
    "description",
    "source",
    "bos_token",
    "eos_token",
    "stop_tokens",
    "supports_system",
    "supports_tools",
    "default_system",
    "render_kwargs",
}


def test_every_jinja_has_a_yaml_and_ids_are_valid():
    jinja = {p.stem for p in (CATALOG / "templates").glob("*.jinja")}
    meta = {p.stem for p in (CATALOG / "templates").glob("*.yaml")}
    assert jinja == meta == set(list_templates())
    assert all(re.fullmatch(r"[a-z0-9_]+", t) for t in jinja)
    assert len(jinja) >= 35


@pytest.mark.parametrize("template_id", list_templates())
def test_template_metadata(template_id):
    text, meta = load_template(template_id)
    assert META_KEYS <= set(meta) <= META_KEYS | {"vendor"}   # vendor: the pinned copy (optional for tkc's own)
    assert meta["source"].strip() and meta["description"].strip()
    assert isinstance(meta["bos_token"], str) and isinstance(meta["eos_token"], str)
    assert meta["stop_tokens"] and all(isinstance(s, str) and s for s in meta["stop_tokens"])
    assert isinstance(meta["render_kwargs"], dict)
    assert text.strip()


def test_unknown_template_suggests_close_ids():
    with pytest.raises(KeyError, match="did you mean.*qwen2_5"):
        load_template("qwen25")


def _fake_catalog(tmp_path, monkeypatch, *names):
    for name in names:
        (tmp_path / name).write_text("x", encoding="utf-8")
    monkeypatch.setattr(chat, "TEMPLATES_DIR", tmp_path)
    chat._registry.cache_clear()


def test_unpaired_template_is_rejected(tmp_path, monkeypatch):
    _fake_catalog(tmp_path, monkeypatch, "a.jinja", "a.yaml", "b.jinja")
    try:
        with pytest.raises(ValueError, match=r"\.jinja only \['b'\]"):
            list_templates()
    finally:
        chat._registry.cache_clear()


def test_bad_template_id_is_rejected(tmp_path, monkeypatch):
    _fake_catalog(tmp_path, monkeypatch, "Qwen-2.jinja", "Qwen-2.yaml")
    try:
        with pytest.raises(ValueError, match="must match"):
            list_templates()
    finally:
        chat._registry.cache_clear()


def test_catalog_loader_accepts_every_record():
    registry = pytest.importorskip("tkc.catalog.registry")
    assert set(registry.templates()) == set(list_templates())
    assert set(registry.families()) == set(FAMILIES)


def test_no_two_families_claim_a_model_type_or_architecture():
    for key in ("model_types", "architectures"):
        seen: dict[str, str] = {}
        for fid, fam in FAMILIES.items():
            for value in fam[key]:
                assert value not in seen, f"{key} {value!r} claimed by {seen.get(value)} and {fid}"
                seen[value] = fid


def test_hub_ids_are_unique_across_families():
    seen: dict[str, str] = {}
    for fid, fam in FAMILIES.items():
        for hub_id in fam.get("hub_models") or {}:   # optional: a family without chat checkpoints
            assert hub_id.lower() not in seen, f"{hub_id} in {seen.get(hub_id.lower())} and {fid}"
            seen[hub_id.lower()] = fid


@pytest.mark.parametrize("family_id", sorted(set(FAMILIES) - REMOTE_CODE))
def test_family_names_real_transformers_classes(family_id):
    auto = pytest.importorskip("transformers.models.auto.configuration_auto")
    transformers = pytest.importorskip("transformers")
    modeling = pytest.importorskip("transformers.models.auto.modeling_auto")
    fam = FAMILIES[family_id]
    assert set(fam["model_types"]) <= set(auto.CONFIG_MAPPING_NAMES)
    # a vendor architecture name transformers lacks (InternLM3ForCausalLM) is allowed only when every model_type of
    # the family maps natively to a transformers class, the one the family smoke test builds
    native = {modeling.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(mt) for mt in fam["model_types"]}
    for arch in fam["architectures"]:
        smoke = (fam.get("verified") or {}).get("smoke")
        assert hasattr(transformers, arch) or (smoke is not None and native == {smoke}), arch


def test_internlm3_is_detected_by_its_model_type_alone():
    """transformers builds internlm3 as LlamaForCausalLM; only the internlm3 family claims it, llama stays llama."""
    from tkc.catalog.registry import families
    from tkc.compiler.passes.resolve_model_family import _by_config

    fams = families()
    assert _by_config({"model_type": "internlm3", "architectures": ["InternLM3ForCausalLM"]}, fams)[0] == ["internlm3"]
    assert _by_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, fams)[0] == ["llama"]


def test_qwen1_5_chat_checkpoints_have_their_own_template():
    """Qwen/Qwen1.5-4B-Chat's vendor text (a period after the default system prompt) is not the base tokenizer's."""
    from tkc.catalog.chat import load_template, render

    msgs = [{"role": "user", "content": "Hi"}]
    chat = render(load_template("qwen1_5_chat")[0], msgs, add_generation_prompt=True)
    base = render(load_template("qwen1_5")[0], msgs, add_generation_prompt=True)
    assert chat.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert base.startswith("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n")


def test_glm4_revisions_differ_in_the_assistant_name_not_the_generation_prompt():
    from tkc.catalog.chat import load_template, render

    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]
    msgs = [{"role": "system", "content": "", "tools": tools}, {"role": "user", "content": "Hi"}]
    old = render(load_template("glm4")[0], msgs, add_generation_prompt=True)
    new = render(load_template("glm4_hf")[0], msgs, add_generation_prompt=True)
    assert "你是一个名为 ChatGLM 的人工智能助手" in old and "你是一个名为 GLM-4 的人工智能助手" in new
    assert old.endswith("<|user|>\nHi<|assistant|>") and new.endswith("<|user|>\nHi<|assistant|>")
