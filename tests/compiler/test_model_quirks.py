"""Family quirks resolved into the plan: the family's stop tokens join the template's; MoE and attention
settings with their provenance (tests/runtime/test_moe.py runs them)."""

from __future__ import annotations

import json

from tkc.catalog import registry


def test_family_stop_tokens_join_the_template_stops(tmp_path, tkc, demo_copy, monkeypatch):
    from tkc.compiler.passes import resolve_chat_template

    fams = dict(registry.families())
    fams["qwen2"] = fams["qwen2"].model_copy(update={"stop_tokens": ["<|endoftext|>", "<|im_end|>"]})
    monkeypatch.setattr(resolve_chat_template, "families", lambda: fams)
    code, out, err = tkc("compile", demo_copy / "demo.yaml", "-o", tmp_path / "run")
    assert code == 0, out + err
    template = json.loads((tmp_path / "run/resolved.json").read_text(encoding="utf-8"))["template"]
    prov = json.loads((tmp_path / "run/provenance.json").read_text(encoding="utf-8"))
    assert template["stop_tokens"] == ["<|im_end|>", "<|endoftext|>"]   # the template's first, no duplicate
    assert prov["template.stop_tokens"].endswith("+ family:qwen2")


def test_dense_family_plan_has_no_moe_and_sdpa(tmp_path, tkc, demo_copy):
    code, out, err = tkc("compile", demo_copy / "demo.yaml", "-o", tmp_path / "run")
    assert code == 0, out + err
    model = json.loads((tmp_path / "run/resolved.json").read_text(encoding="utf-8"))["model"]
    assert model["moe"] is None and model["attn_implementation"] == "sdpa"
    code, out, err = tkc("explain", demo_copy / "demo.yaml", "model")
    assert code == 0 and "model.attn_implementation" in out and "family:qwen2" in out
