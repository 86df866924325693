"""A chat dataset's `tools` column is read when the data has one and the recipe names no tools column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tkc.compiler.dataset_formats import auto_columns, resolve_columns_and_tags
from tkc.compiler.datasets_probe import probe_dataset

REPO = Path(__file__).resolve().parents[2]
GLAIVE = REPO.parent / "shared" / "datasets" / "glaive_toolcall_en_demo.json"
needs_shared = pytest.mark.skipif(not GLAIVE.is_file(), reason=f"shared demo datasets not found at {GLAIVE}")


def test_auto_columns_only_where_the_recipe_is_silent():
    assert auto_columns("sharegpt", None) == {"tools": "tools"}
    assert auto_columns("openai", {"messages": "msgs"}) == {"tools": "tools"}
    assert auto_columns("sharegpt", {"tools": None}) == {}  # an explicit null leaves the column out
    assert auto_columns("alpaca", None) == {} and auto_columns("text", None) == {}


def test_probe_maps_and_checks_a_tools_column_it_sees(tmp_path):
    rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": 5}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    cols, tags = resolve_columns_and_tags("openai", "sft", None, None)
    probe = probe_dataset(tmp_path / "d.jsonl", None, cols, "openai", "sft", tags=tags, root=tmp_path,
                          auto_columns=auto_columns("openai", None))  # fmt: skip
    assert probe.columns["tools"] == "tools" and probe.auto_mapped == ("tools",)
    assert [(p.line, p.message) for p in probe.problems] == [(1, "column 'tools' (tools) is int 5")]
    (tmp_path / "d.jsonl").write_text(json.dumps({k: v for k, v in rec.items() if k != "tools"}) + "\n")
    probe = probe_dataset(tmp_path / "d.jsonl", None, cols, "openai", "sft", tags=tags, root=tmp_path,
                          auto_columns=auto_columns("openai", None))  # fmt: skip
    assert probe.columns["tools"] is None and probe.auto_mapped == () and probe.ok


def _recipe(tmp_path: Path, columns: str) -> Path:
    shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", tmp_path / "assets" / "tiny-qwen2")
    (tmp_path / "data").mkdir()
    shutil.copy(GLAIVE, tmp_path / "data" / "glaive.json")
    (tmp_path / "r.yaml").write_text(f"""schema_version: 1
name: tools
model: {{path: assets/tiny-qwen2, init: scratch}}
template: qwen2_5
data:
  datasets:
    glaive: {{path: data/glaive.json, format: sharegpt{columns}}}
  cutoff_len: 512
stages:
  - {{kind: sft, name: sft, datasets: [glaive], finetuning: {{method: full}}}}
hardware: cpu
""")
    return tmp_path / "r.yaml"


@needs_shared
def test_glaive_tools_column_is_mapped_with_provenance(tkc, tmp_path):
    recipe = _recipe(tmp_path, "")
    code, out, err = tkc("compile", recipe, "-o", tmp_path / "run")
    assert code == 0, err
    resolved = json.loads((tmp_path / "run" / "resolved.json").read_text())
    assert resolved["datasets"]["glaive"]["columns"]["tools"] == "tools"
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert provenance["datasets.glaive.columns"] == "derived:dataset_formats+derived:load_inputs(tools)"


@needs_shared
def test_an_explicit_null_leaves_the_tools_column_out(tkc, tmp_path):
    recipe = _recipe(tmp_path, ", columns: {messages: conversations, tools: null}")
    code, out, err = tkc("compile", recipe, "-o", tmp_path / "run")
    assert code == 0, err
    resolved = json.loads((tmp_path / "run" / "resolved.json").read_text())
    assert resolved["datasets"]["glaive"]["columns"]["tools"] is None
