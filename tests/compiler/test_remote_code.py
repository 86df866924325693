"""trust_remote_code: a local model's Python files are always hashed into the bundle (never size-only), a hub model
needs a pinned commit (MODEL003, a positioned error without --strict); the runtime tests load such a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tkc.compiler import compile_recipe
from tkc.schema.diagnostics import CompileError

SHA = "0123456789abcdef0123456789abcdef01234567"


def _hub_recipe(folder: Path, revision: str | None) -> Path:
    rev = f"\n  revision: {json.dumps(revision)}" if revision else ""
    recipe = folder / "demo.yaml"
    text = recipe.read_text().replace("model:\n  path: assets/tiny-qwen2      # config.json + tokenizer, no weights: "
                                      "built from scratch with the seed\n  init: scratch",
                                      f"model:\n  path: Qwen/Qwen2.5-0.5B-Instruct{rev}\n  trust_remote_code: true")
    assert "Qwen/Qwen2.5-0.5B-Instruct" in text
    recipe.write_text(text)
    return recipe


@pytest.mark.parametrize("revision", [None, "main", "v1.0", SHA[:12]])
def test_hub_remote_code_needs_a_pinned_commit(demo_copy, revision):
    recipe = _hub_recipe(demo_copy, revision)
    with pytest.raises(CompileError) as info:
        compile_recipe(recipe)
    found = [d for d in info.value.diagnostics if d.code == "MODEL003"]
    assert len(found) == 1 and found[0].line is not None
    assert found[0].path == ("model.revision" if revision else "model.trust_remote_code")
    assert "40-hex commit sha" in found[0].message


def test_hub_remote_code_at_a_commit_compiles(demo_copy):
    resolved = compile_recipe(_hub_recipe(demo_copy, SHA)).resolved
    assert resolved["model"]["trust_remote_code"] is True and resolved["model"]["revision"] == SHA
    assert resolved["hermetic"] is True


def test_python_files_are_hashed_whatever_their_size(demo_copy, monkeypatch):
    from tkc.compiler import inputs

    model = demo_copy / "assets" / "tiny-qwen2"
    (model / "modeling_big.py").write_text("# generated\n" + "X = 1\n" * 40)
    monkeypatch.setattr(inputs, "MODEL_FILE_LIMIT", 100)  # as if the file were over the 64 MiB limit
    files = compile_recipe(demo_copy / "demo.yaml", ["model.trust_remote_code=true"]).resolved["model"]["files"]
    assert len(files["modeling_big.py"]) == 64 and not files["modeling_big.py"].startswith("size:")
    assert files["tokenizer.json"].startswith("size:")  # other large files stay size-only


def test_local_remote_code_is_hermetic_and_no_longer_a_warning(demo_copy):
    resolved = compile_recipe(demo_copy / "demo.yaml", ["model.trust_remote_code=true"]).resolved
    assert resolved["hermetic"] is True and resolved["non_hermetic_reasons"] == []
