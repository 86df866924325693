"""The board reads nothing outside its workspace: a recipe whose extends:, read_roots:, model, datasets (and registry
entries), media root, benchmark or reward bundle resolve outside it is refused (400 `path` naming the key, file and
line) BEFORE the compiler reads anything; a bundle whose source root or inputs lie outside is not run, chatted
with or exported. Real server, real files; FIFOs outside stand for files that must not be opened (opening one
for reading blocks, so a read would hang the request past its timeout instead of answering 400)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import board_server as S  # tests/board/board_server.py (pytest puts this folder on sys.path)
import pytest
import requests

H = S.HEADERS
TIMEOUT = 30


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    ws = S.make_workspace(tmp_path_factory.mktemp("ws"))
    out = tmp_path_factory.mktemp("outside")
    shutil.copytree(S.REPO / "recipes" / "assets" / "tiny-qwen2", out / "tiny-qwen2")
    os.mkfifo(out / "fifo.jsonl")
    os.mkfifo(out / "dataset_info.json")
    (out / "secret.jsonl").write_text('{"instruction": "secret", "output": "x"}\n')
    (out / "base.yaml").write_text("name: outside\n")
    data = ws / "recipes" / "data"
    (data / "linked").symlink_to(out, target_is_directory=True)
    (data / "folder").mkdir()
    shutil.copy(data / "small_sft.jsonl", data / "folder" / "a.jsonl")
    (data / "folder" / "b.jsonl").symlink_to(out / "secret.jsonl")
    os.mkfifo(data / "inside_fifo.jsonl")
    (data / "dataset_info.json").write_text(json.dumps({"ext": {"file_name": str(out / "fifo.jsonl")}}))
    (ws / "recipes" / "base" / "wide.yaml").write_text(f"read_roots: [{out}]\n")
    return ws, out


@pytest.fixture(scope="module")
def board(dirs):
    url, stop = S.start_board(dirs[0])
    yield url
    stop()


def tiny(ws: Path, old: str = "", new: str = "") -> str:
    text = (ws / "recipes" / "tiny.yaml").read_text()
    assert old in text
    return text.replace(old, new, 1)


# (name, how the tiny recipe changes (old, new) with {out} the outside folder, the key refused, what the message says)
CASES = [
    ("read_roots", ("name: tiny", "name: tiny\nread_roots: [{out}]"), "read_roots.0", "outside"),
    ("read_roots_relative", ("name: tiny", "name: tiny\nread_roots: [../../{outname}]"), "read_roots.0",
     "outside"),
    ("extends", ("extends: [base/tiny_cpu.yaml]", "extends: [base/tiny_cpu.yaml, {out}/base.yaml]"), "extends.1",
     "outside"),
    ("model", ("name: tiny", "name: tiny\nmodel: {{path: {out}/tiny-qwen2, init: scratch}}"), "model.path", "outside"),
    ("dataset", ("data/small_sft.jsonl", "{out}/fifo.jsonl"), "data.datasets.small_sft.path", "outside"),
    ("dataset_via_symlinked_folder", ("data/small_sft.jsonl", "data/linked/fifo.jsonl"),
     "data.datasets.small_sft.path", "outside"),
    ("dataset_folder_holding_a_link_out", ("data/small_sft.jsonl", "data/folder"), "data.datasets.small_sft.path",
     "symlink out"),
    ("dataset_fifo_inside", ("data/small_sft.jsonl", "data/inside_fifo.jsonl"), "data.datasets.small_sft.path",
     "FIFO"),
    ("media_root", ("data:\n", "data:\n  media: {{root: {out}}}\n"), "data.media.root", "outside"),
    ("registry", ("data:\n", "data:\n  registry: {out}/dataset_info.json\n"), "data.registry", "outside"),
    ("registry_entry", ("data:\n  datasets:\n", "data:\n  registry: data/dataset_info.json\n  datasets:\n"
                        "    ext: {{registry: ext}}\n"), "data.datasets.ext.registry", "outside"),
    ("benchmark", ("train:", "  - {{kind: eval, name: ev, metric: mmlu, benchmark: {{path: {out}}}}}\ntrain:"),
     "stages.1.benchmark.path", "outside"),
    ("reward_bundle", ("train:", "  - {{kind: ppo, name: p, datasets: [small_sft], reward_model: '{out}/rm:rm'}}\n"
                       "train:"), "stages.1.reward_model", "outside"),
]


@pytest.mark.parametrize("route", ["/api/validate", "/api/compile", "/api/dataset/inspect"])
@pytest.mark.parametrize(("name", "edit", "field", "why"), CASES, ids=[c[0] for c in CASES])
def test_recipe_inputs_outside_the_workspace_are_refused_before_reading(board, dirs, route, name, edit, field, why):
    ws, out = dirs
    old, new = edit
    text = tiny(ws, old, new.format(out=out, outname=out.name))
    path = f"recipes/confine_{name}.yaml"
    body = {"path": path, "recipe_path": path, "text": text, "out": f"runs/confine_{name}", "dataset": "small_sft"}
    r = requests.post(f"{board}{route}", json=body, headers=H, timeout=TIMEOUT)  # a FIFO opened would hang here
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["code"] == "path" and e["field"] == field and why in e["message"], e
    assert e["file"] == path and isinstance(e["line"], int)
    assert text.splitlines()[e["line"] - 1].strip(), e  # the line holds the key (or its parent)
    assert str(out) not in r.text and str(ws) not in r.text and "Traceback" not in r.text
    assert not (ws / "runs" / f"confine_{name}").exists()
    assert not [p for p in (ws / "recipes").iterdir() if "tkc-board" in p.name]


def test_a_base_listing_read_roots_outside_is_refused_naming_the_base(board, dirs):
    ws, _ = dirs
    text = tiny(ws, "extends: [base/tiny_cpu.yaml]", "extends: [base/tiny_cpu.yaml, base/wide.yaml]")
    r = requests.post(f"{board}/api/validate", json={"path": "recipes/based.yaml", "text": text}, headers=H,
                      timeout=TIMEOUT)
    e = r.json()["error"]
    assert r.status_code == 400 and e["field"] == "read_roots.0" and e["file"] == "recipes/base/wide.yaml", r.text


def test_hub_model_ids_and_inside_paths_still_validate(board, dirs):
    ws, _ = dirs
    ok = requests.post(f"{board}/api/validate", json={"path": "recipes/ok.yaml", "text": tiny(ws)}, headers=H,
                       timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.json()["ok"], ok.text
    hub = tiny(ws, "name: tiny", "name: tiny\nmodel: {path: Qwen/Qwen2.5-0.5B-Instruct, init: scratch}")
    r = requests.post(f"{board}/api/validate", json={"path": "recipes/hub.yaml", "text": hub}, headers=H,
                      timeout=TIMEOUT)
    assert r.status_code == 200, r.text  # the compiler's own answer for a hub id (nothing downloaded)
    assert not (ws / "recipes" / "Qwen").exists()


def _compile_cli(ws: Path, recipe: str, out: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "tkc.cli.main", "compile", recipe, "-o", out], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _refused(board: str, bundle: str, key: str) -> None:
    for route, body in (("/api/runs", {}), ("/api/export", {"out": "exports/x"}),
                        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]})):
        r = requests.post(f"{board}{route}", json={"bundle": bundle, **body}, headers=H, timeout=TIMEOUT)
        assert r.status_code == 400, (route, r.text)
        e = r.json()["error"]
        assert e["code"] == "path" and e["field"] == "bundle" and e["key"] == key, (route, e)
        assert "Traceback" not in r.text and "<outside the workspace>" not in e["key"]


def test_bundles_reading_outside_the_workspace_are_not_run_chatted_or_exported(board, dirs):
    ws, out = dirs
    # compiled by the CLI (allowed there): read_roots and the model outside the workspace
    wide = tiny(ws, "name: tiny", f"name: tiny\nread_roots: [{out}]\nmodel: {{path: {out}/tiny-qwen2, init: scratch}}")
    (ws / "recipes" / "wide.yaml").write_text(wide)
    _compile_cli(ws, "recipes/wide.yaml", "runs/wide")
    assert requests.get(f"{board}/api/bundle", params={"path": "runs/wide"}, timeout=TIMEOUT).json()["verified"]
    _refused(board, "runs/wide", "read_roots.0")
    # an intact bundle whose (unhashed) volatile.json points its source root outside
    _compile_cli(ws, "recipes/tiny.yaml", "runs/moved")
    volatile = json.loads((ws / "runs" / "moved" / "volatile.json").read_text())
    (ws / "runs" / "moved" / "volatile.json").write_text(json.dumps({**volatile, "source_root": str(out)}))
    assert requests.get(f"{board}/api/bundle", params={"path": "runs/moved"}, timeout=TIMEOUT).json()["verified"]
    _refused(board, "runs/moved", "volatile.json source_root")
    assert not (ws / ".tkc-board" / "runs").exists() and not (ws / "exports").exists()
