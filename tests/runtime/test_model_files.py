"""The model folder is checked against the bundle's recorded files before anything loads it; remote code runs only
from files the bundle hashed; `tkc run` never reads stdin. Real compiles, real transformers loads, real `tkc run`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tkc.bundle.plan import ResolvedModel, load_plan
from tkc.runtime.model_files import ModelFilesChanged, PathOutsideRoots, checked_model_path

TKC = str(Path(sys.executable).parent / "tkc")
CUSTOM_CODE = '''"""A tiny model with its own code (trust_remote_code): records that it ran."""
import os
import pathlib

from transformers import Qwen2Config, Qwen2ForCausalLM

if os.environ.get("TKC_TEST_REMOTE_MARKER"):
    with open(os.environ["TKC_TEST_REMOTE_MARKER"], "a") as f:
        f.write("custom_modeling ran\\n")


class TinyCustomConfig(Qwen2Config):
    model_type = "qwen2"


class TinyCustomForCausalLM(Qwen2ForCausalLM):
    config_class = TinyCustomConfig
'''
# Loads the bundle's base model the way `tkc run` and `tkc chat` do, and prints the class transformers built.
LOAD = ("import sys, pathlib; from tkc.runtime.infer import open_context; from tkc.runtime.model import base_weights;"
        "ctx = open_context(pathlib.Path(sys.argv[1])); m = base_weights(ctx);"
        "print('MODEL', type(m).__name__)")


def _compile(tkc, recipes: Path, out: Path, *sets: str) -> dict:
    code, stdout, stderr = tkc("compile", recipes / "demo.yaml", "-o", out, *[a for s in sets for a in ("--set", s)])
    assert code == 0, stdout + stderr
    return json.loads((out / "resolved.json").read_text())


@pytest.fixture
def bundle(tkc, demo_copy, tmp_path) -> tuple[Path, Path]:
    """(compiled demo bundle, its model folder)."""
    out = tmp_path / "run"
    _compile(tkc, demo_copy, out)
    return out, demo_copy / "assets" / "tiny-qwen2"


def test_a_swapped_tokenizer_is_refused_before_any_stage_runs(bundle):
    out, model = bundle
    recorded = json.loads((out / "resolved.json").read_text())["model"]["files"]["tokenizer.json"]
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|swapped|>"
    (model / "tokenizer.json").write_text(json.dumps(tok))
    proc = subprocess.run([TKC, "run", str(out)], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "tokenizer.json: sha256 " in proc.stdout and f"the bundle recorded {recorded}" in proc.stdout
    assert not any((out / "outputs").glob("*/steps.jsonl")), "a stage started"


def test_added_removed_escaping_and_changed_files_are_each_named(bundle, tmp_path):
    out, model = bundle
    resolved = load_plan(out)
    root = model.parent.parent
    assert checked_model_path(resolved, root) == str(model)
    (model / "extra.py").write_text("print('hi')\n")
    (model / ".hidden_note").write_text("the compiler skips hidden files; so does the check\n")
    (model / "generation_config.json").unlink()
    outside = tmp_path / "elsewhere.json"
    outside.write_text((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").unlink()
    (model / "tokenizer_config.json").symlink_to(outside)
    with (model / "config.json").open("a") as f:
        f.write("\n")
    with pytest.raises(ModelFilesChanged) as info:
        checked_model_path(resolved, root)
    text = str(info.value)
    assert "extra.py: added since compile" in text
    assert "generation_config.json: missing" in text
    assert f"tokenizer_config.json: a symlink out of the model folder (to {outside})" in text
    assert "config.json: sha256 " in text and resolved.model.files["config.json"] in text
    assert ".hidden_note" not in text


def test_size_only_entries_are_checked_by_size(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    model = ResolvedModel(source="local", path="m", revision=None, family="qwen2", model_type="qwen2", init="pretrained",
                          trust_remote_code=False, files={"model.safetensors": "size:10"})
    resolved = SimpleNamespace(model=model, read_roots=())  # the two plan fields the check reads
    assert checked_model_path(resolved, tmp_path) == str(folder)
    (folder / "model.safetensors").write_bytes(b"y" * 10)  # same size: what a size-only entry can promise
    assert checked_model_path(resolved, tmp_path) == str(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 11)
    with pytest.raises(ModelFilesChanged, match="model.safetensors: size 11 bytes, the bundle recorded 10"):
        checked_model_path(resolved, tmp_path)


def test_a_model_folder_moved_outside_the_read_roots_is_refused_at_run(bundle, tmp_path):
    out, model = bundle
    resolved = load_plan(out)
    moved = tmp_path / "moved-model"
    shutil.move(model, moved)
    model.symlink_to(moved)  # same files, but now read from outside the recipe's folder
    with pytest.raises(PathOutsideRoots, match="read_roots"):
        checked_model_path(resolved, model.parent.parent)


def test_data_inspect_refuses_a_changed_model_folder(bundle, tkc):
    out, model = bundle
    (model / "merges.txt").write_text("#version: 0.2\n")
    code, stdout, stderr = tkc("data", "inspect", out)
    assert code == 2
    assert "merges.txt: added since compile" in stdout + stderr


def _custom_model(recipes: Path) -> Path:
    model = recipes / "assets" / "tiny-qwen2"
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_modeling.TinyCustomConfig",
                          "AutoModelForCausalLM": "custom_modeling.TinyCustomForCausalLM"}
    (model / "config.json").write_text(json.dumps(config, indent=2))
    (model / "custom_modeling.py").write_text(CUSTOM_CODE)
    return model


def _load(out: Path, tmp_path: Path, *cmd: str) -> tuple[subprocess.CompletedProcess, str]:
    marker = tmp_path / "ran.txt"
    env = {**os.environ, "TKC_TEST_REMOTE_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = list(cmd) or [sys.executable, "-c", LOAD, str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    return proc, marker.read_text() if marker.exists() else ""


def test_remote_code_does_not_run_without_the_flag(tkc, demo_copy, tmp_path):
    _custom_model(demo_copy)
    out = tmp_path / "run"
    assert _compile(tkc, demo_copy, out)["model"]["trust_remote_code"] is False
    proc, ran = _load(out, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MODEL Qwen2ForCausalLM" in proc.stdout and ran == ""


def test_remote_code_runs_with_the_flag_from_hashed_files_without_asking(tkc, demo_copy, tmp_path):
    """init: scratch passes trust_remote_code on (it used to be dropped: transformers then asked on stdin)."""
    model = _custom_model(demo_copy)
    out = tmp_path / "run"
    resolved = _compile(tkc, demo_copy, out, "model.trust_remote_code=true")
    assert resolved["model"]["files"]["custom_modeling.py"] == _sha256(model / "custom_modeling.py")
    assert resolved["hermetic"] is True
    proc, ran = _load(out, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MODEL TinyCustomForCausalLM" in proc.stdout and "custom_modeling ran" in ran


def test_tampered_remote_code_is_refused_before_it_runs(tkc, demo_copy, tmp_path):
    model = _custom_model(demo_copy)
    out = tmp_path / "run"
    _compile(tkc, demo_copy, out, "model.trust_remote_code=true")
    with (model / "custom_modeling.py").open("a") as f:
        f.write("print('TAMPERED CODE RAN')\n")
    proc, ran = _load(out, tmp_path, TKC, "run", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "custom_modeling.py: sha256 " in proc.stdout and ran == "" and "TAMPERED CODE RAN" not in proc.stdout


def test_tkc_run_reads_nothing_from_stdin():
    code = "from tkc.runtime.run import no_stdin; no_stdin(); import sys, os; print(repr(sys.stdin.read()), " \
           "repr(os.read(0, 100)))"
    proc = subprocess.run([sys.executable, "-c", code], input="y\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "'' b''"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
