"""An unknown model (config.json matching no catalog family) compiles with its fallbacks, named as such in the plan's
provenance, and a MODEL004 note names the family file that would make it exact; a hub id the catalog does not
know is still MODEL001 (nothing is read to fall back on)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tkc.compiler import compile_recipe
from tkc.compiler.passes.resolve_model_family import FALLBACK, family_fallback_notes
from tkc.schema.diagnostics import CompileError

CONFIG = {"model_type": "brand_new_arch", "architectures": ["BrandNewForCausalLM"], "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 512}
RECIPE = "name: t\nmodel: {path: %s}\ndata: {datasets: {d: {path: d.jsonl}}}\n" \
         "stages: [{kind: sft, finetuning: {method: %s}}]\n"


def _recipe(tmp_path: Path, *, chat_template: bool = True, path: str = "m", method: str = "lora") -> Path:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.json").write_text(json.dumps(CONFIG))
    if chat_template:
        tok = {"chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
               "eos_token": "</s>"}
        (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(tok))
    (tmp_path / "d.jsonl").write_text('{"instruction": "q", "input": "", "output": "a"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE % (path, method))
    return recipe


def test_unknown_model_compiles_with_named_fallbacks(tmp_path):
    compiled = compile_recipe(_recipe(tmp_path))
    plan = compiled.plan
    assert plan.get("model.family") is None and plan.get("model.model_type") == "brand_new_arch"
    assert plan.get("stages.0.finetuning.lora.targets") == ["q_proj", "v_proj"]
    for key in ("model.family", "model.decoder_layer", "stages.0.finetuning.lora.targets"):
        assert plan.provenance[key].startswith(FALLBACK), key
    assert plan.get("template.source") == "tokenizer"
    (note,) = family_fallback_notes(plan)
    assert note.code == "MODEL004" and "q_proj, v_proj" in note.message
    assert "src/tkc/catalog/families/brand_new_arch.yaml" in note.hint and "BrandNewForCausalLM" in note.hint


def test_freeze_layers_path_is_a_named_fallback(tmp_path):
    plan = compile_recipe(_recipe(tmp_path, method="freeze")).plan
    assert plan.get("stages.0.finetuning.freeze.layers_path") == "model.layers"
    assert plan.provenance["stages.0.finetuning.freeze.layers_path"].startswith(FALLBACK)


def test_known_model_has_no_fallback_note(tmp_path):
    recipe = _recipe(tmp_path)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**CONFIG, "model_type": "llama"}))
    plan = compile_recipe(recipe).plan
    assert plan.get("model.family") == "llama" and family_fallback_notes(plan) == []
    assert plan.provenance["stages.0.finetuning.lora.targets"] == "family:llama"


def test_unknown_model_without_any_chat_template_is_tmpl003(tmp_path):
    with pytest.raises(CompileError) as info:
        compile_recipe(_recipe(tmp_path, chat_template=False))
    assert [d.code for d in info.value.diagnostics] == ["TMPL003"]


def test_unknown_hub_id_is_still_model001(tmp_path):
    with pytest.raises(CompileError) as info:
        compile_recipe(_recipe(tmp_path, path="someone/not-in-the-catalog"))
    assert "MODEL001" in [d.code for d in info.value.diagnostics]


def test_compile_and_explain_print_the_note(tmp_path):
    recipe = _recipe(tmp_path)
    for verb in (["compile", str(recipe), "--check"], ["explain", str(recipe)]):
        out = subprocess.run([sys.executable, "-m", "tkc.cli.main", *verb], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "MODEL004" in out.stderr and "brand_new_arch.yaml" in out.stderr
