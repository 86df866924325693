"""The CLI verbs as a user runs them: explain, schema, catalog, and the three-mistakes recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_three_mistakes_reported_in_one_run(tkc, demo_copy, tmp_path):
    recipe = demo_copy / "demo.yaml"
    text = recipe.read_text()
    text = text.replace("cutoff_len: 64", "cutoff_len: 64\n  pakcing: true")            # a typo'd key
    text = text.replace("max_new_tokens: 6", "max_new_tokens: six")                     # a wrong type
    text = text.replace("global_batch_size: 16, warmup", "global_batch_size: 6, micro_batch_size: 4, warmup")
    recipe.write_text(text)
    code, _, err = tkc("compile", recipe, "-o", tmp_path / "out")
    assert code == 2
    assert "demo.yaml:21:3: SCHEMA001 data.pakcing: unknown key (did you mean 'packing'?)" in err
    assert "demo.yaml:38:5: SCHEMA002 stages[3].max_new_tokens: Input should be a valid integer" in err
    assert "(stages[3].max_new_tokens: Generation length.)" in err
    assert "demo.yaml:28:47: BATCH001 stages[0].train.global_batch_size: stage 'pretrain': global batch 6 is " \
           "not divisible by devices (1) x micro batch (4) (use a multiple of 4)" in err
    assert "3 problems found; nothing was written" in err
    assert not (tmp_path / "out").exists()


def test_cross_field_rules_all_reported(tkc, demo_copy):
    recipe = demo_copy / "demo.yaml"
    recipe.write_text(recipe.read_text().replace("cutoff_len: 64", "cutoff_len: 64\n  packing: true").replace(
        "max_new_tokens: 6", "max_new_tokens: 6\n  - kind: infer\n    engine: vllm\n  - kind: dpo\n"
        "    datasets: [arith_sfft]"))
    code, _, err = tkc("compile", recipe, "--check")
    assert code == 2
    for expected in ("INFER001", "DATA010", "PACK001", "did you mean 'arith_sft'?"):
        assert expected in err


def test_explain_names_provenance_and_line(tkc):
    code, out, _ = tkc("explain", REPO / "recipes" / "demo.yaml", "train.learning_rate")
    assert code == 0
    lines = out.strip().splitlines()
    assert "stages.0.train.learning_rate = 0.003    [recipe (" in lines[0] and "demo.yaml:27)]" in lines[0]
    code, out, _ = tkc("explain", REPO / "recipes" / "demo.yaml", "precision")
    assert "[derived:derive_precision]" in out
    code, out, _ = tkc("explain", REPO / "recipes" / "demo.yaml", "model.family")
    assert "model.family = \"qwen2\"    [derived:resolve_model_family]" in out


def test_schema_is_valid_json_schema(tkc):
    code, out, _ = tkc("schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "tkc recipe" and "stages" in schema["properties"]
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


def test_catalog_listing(tkc):
    for what in ("templates", "families", "profiles"):
        code, out, _ = tkc("catalog", what)
        assert code == 0 and out.strip()


def test_catalog_render_prints_exactly_the_text(tmp_path):
    conv = tmp_path / "c.json"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))
    out = subprocess.run([sys.executable, "-m", "tkc.cli.main", "catalog", "render", "chatml", str(conv)],
                         capture_output=True, check=True)
    assert out.stdout == b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_catalog_render_refusal_exits_nonzero(tmp_path):
    conv = tmp_path / "c.json"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}))
    out = subprocess.run([sys.executable, "-m", "tkc.cli.main", "catalog", "render", "llama2", str(conv)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "refuses" in out.stderr and out.stdout == ""


def test_explain_shows_the_default_system_the_tokenizer_template_inserts(tkc, demo_copy):
    # template: auto with the tiny model's tokenizer template (Qwen2.5's, which adds a system turn when none is given)
    code, out, _ = tkc("explain", demo_copy / "demo.yaml", "template.default_system")
    assert code == 0
    assert out.strip() == ('template.default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful '
                           'assistant."    [derived:resolve_chat_template:render_probe]')
    config = demo_copy / "assets" / "tiny-qwen2" / "tokenizer_config.json"
    tok = json.loads(config.read_text())
    tok["chat_template"] = tok["chat_template"].replace("You are Qwen, created by Alibaba Cloud. You are a helpful "
                                                        "assistant.", "Be brief.")
    config.write_text(json.dumps(tok))
    code, out, _ = tkc("explain", demo_copy / "demo.yaml", "template.default_system")
    assert code == 0 and 'template.default_system = "Be brief."' in out
    code, out, _ = tkc("explain", demo_copy / "demo.yaml", "template.default_system", "--set", "template=chatml")
    assert code == 0 and out.strip() == "template.default_system = null    [template:chatml]"
