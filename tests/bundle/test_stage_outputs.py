"""Stage output manifests on disk: what is listed, what a check finds, what `tkc verify` says (no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tkc.bundle.canonical import canonical_bytes, sha256_bytes
from tkc.bundle.io import read_manifest
from tkc.bundle.stage_outputs import check_stage_outputs, write_stage_manifest


def _finished_stage(bundle: Path, name: str = "sft") -> Path:
    """A stage folder as a finished stage leaves it: model files, metrics, checkpoints, manifest, then DONE."""
    stage = bundle / "outputs" / name
    (stage / "model").mkdir(parents=True)
    (stage / "model" / "adapter_model.safetensors").write_bytes(b"weights" * 1000)
    (stage / "model" / "adapter_config.json").write_text('{"r": 8}')
    (stage / "metrics.json").write_text("{}")
    (stage / "checkpoints" / "ckpt-2").mkdir(parents=True)
    (stage / "checkpoints" / "ckpt-2" / "state.json").write_text("{}")
    digest = read_manifest(bundle)["bundle_hash"] if (bundle / "manifest.json").exists() else "0" * 64
    write_stage_manifest(stage, name, digest)
    (stage / "DONE").write_text(digest + "\n")
    return stage


def test_manifest_lists_every_output_but_checkpoints_in_canonical_json(tmp_path):
    stage = _finished_stage(tmp_path)
    raw = (stage / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    assert raw == canonical_bytes(manifest) + b"\n"
    assert manifest["stage"] == "sft" and manifest["bundle_hash"] == "0" * 64
    assert manifest["files"] == {
        "metrics.json": sha256_bytes(b"{}"), "model/adapter_config.json": sha256_bytes(b'{"r": 8}'),
        "model/adapter_model.safetensors": sha256_bytes(b"weights" * 1000)}
    assert check_stage_outputs(stage, "0" * 64) == []
    assert [p.problem for p in check_stage_outputs(stage, "1" * 64)] == [
        "written for bundle 000000000000, not this bundle 111111111111"]
    assert not list(stage.glob(".manifest.json.*"))  # the temp file was renamed into place


def test_check_names_changed_added_removed_and_symlinked_files(tmp_path):
    stage = _finished_stage(tmp_path)
    weights = stage / "model" / "adapter_model.safetensors"
    expected = sha256_bytes(weights.read_bytes())
    data = bytearray(weights.read_bytes())
    data[3] ^= 1
    weights.write_bytes(bytes(data))
    (stage / "model" / "extra.bin").write_bytes(b"x")
    (stage / "model" / "adapter_config.json").unlink()
    os.symlink(stage / "metrics.json", stage / "model" / "link.json")
    (stage / "checkpoints" / "ckpt-2" / "state.json").write_text("resume state is not checked")
    found = {p.path: p for p in check_stage_outputs(stage)}
    assert set(found) == {"model/adapter_model.safetensors", "model/extra.bin", "model/adapter_config.json",
                          "model/link.json"}
    changed = found["model/adapter_model.safetensors"]
    assert changed.problem == "changed after the stage finished"
    assert (changed.expected, changed.actual) == (expected, sha256_bytes(bytes(data)))
    assert found["model/extra.bin"].problem == "added after the stage finished"
    assert found["model/adapter_config.json"].problem == "removed after the stage finished"
    assert "symlink" in found["model/link.json"].problem


def test_missing_manifest_is_a_problem(tmp_path):
    stage = _finished_stage(tmp_path)
    (stage / "manifest.json").unlink()
    assert [p.path for p in check_stage_outputs(stage)] == ["manifest.json"]


def test_verify_checks_finished_stages_and_says_so(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    code, _, err = tkc("compile", demo_copy / "demo.yaml", "-o", out)
    assert code == 0, err
    stage = _finished_stage(out, "sft")
    (out / "outputs" / "eval").mkdir()  # not finished (no DONE): not checked
    (out / "outputs" / "eval" / "partial.jsonl").write_text("{}")
    code, stdout, _ = tkc("verify", out)
    assert code == 0 and "ok outputs/sft: 3 file(s) match its manifest.json" in stdout and "eval" not in stdout
    weights = stage / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"!")
    code, stdout, err = tkc("verify", out)
    assert code == 1 and f"{stage}/model/adapter_model.safetensors: changed after the stage finished" in err
    assert "expected sha256 " + sha256_bytes(b"weights" * 1000) in err and "FAILED verification (1 problem(s))" in err
