"""DATA011: a cutoff_len longer than the model's positions (its config.json) is a positioned compile error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tkc.compiler import compile_recipe
from tkc.compiler.plan import ModelFacts

REPO = Path(__file__).resolve().parents[2]


def _model_positions(config: dict) -> int | None:
    return ModelFacts(True, "m", config).max_positions()


def _project(tmp_path: Path, cutoff: int | None) -> Path:
    shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", tmp_path / "assets" / "tiny-qwen2")
    shutil.copytree(REPO / "recipes" / "data", tmp_path / "data")
    (tmp_path / "r.yaml").write_text(f"""schema_version: 1
name: cutoff
model: {{path: assets/tiny-qwen2, init: scratch}}
template: auto
data:
  datasets:
    d: {{path: data/arith_sft.jsonl, format: alpaca}}
{f"  cutoff_len: {cutoff}" if cutoff else ""}
stages:
  - {{kind: sft, name: sft, datasets: [d], finetuning: {{method: full}}}}
hardware: cpu
""")
    return tmp_path / "r.yaml"


def test_cutoff_above_the_model_limit_is_positioned(tkc, tmp_path):
    assert json.loads((REPO / "recipes/assets/tiny-qwen2/config.json").read_text())["max_position_embeddings"] == 512
    code, _, err = tkc("compile", _project(tmp_path, 4096), "--check")
    assert code == 2, err
    assert "DATA011" in err and "r.yaml:8" in err and "cutoff_len 4096 is longer than the model's 512" in err
    assert "use cutoff_len <= 512" in err


def test_cutoff_at_the_limit_compiles(tkc, tmp_path):
    code, _, err = tkc("compile", _project(tmp_path, 512), "--check")
    assert code == 0, err


def test_the_default_cutoff_is_lowered_to_the_model_limit_with_provenance(tmp_path):
    compiled = compile_recipe(_project(tmp_path, None))   # the schema default (1024) is above the model's 512
    assert compiled.resolved["data"]["cutoff_len"] == 512
    assert compiled.plan.provenance["data.cutoff_len"] == "derived:resolve_model_family(max_position_embeddings)"


def test_model_positions_from_config_shapes():
    assert _model_positions({"max_position_embeddings": 2048}) == 2048
    assert _model_positions({"n_positions": 1024}) == 1024
    assert _model_positions({"text_config": {"max_position_embeddings": 8192}, "max_position_embeddings": 1}) == 8192
    yarn = {"max_position_embeddings": 32768,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    assert _model_positions(yarn) == 131072
    assert _model_positions({}) is None


def test_a_refused_cutoff_gets_no_follow_on_rule_error(tkc, tmp_path):
    """`--set data.cutoff_len=1e9` is a schema error; the default it leaves in the plan is not reported as DATA011."""
    code, _, err = tkc("compile", _project(tmp_path, None), "--check", "--set", "data.cutoff_len=1e9")
    assert code == 2 and "SCHEMA002" in err and "data.cutoff_len" in err
    assert "DATA011" not in err, err
