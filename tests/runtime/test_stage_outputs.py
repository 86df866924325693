"""A finished stage's outputs are sealed by a manifest; a later stage refuses them once they change (exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest

from tkc.bundle.canonical import sha256_file
from tkc.bundle.io import read_manifest


def _bundle(rt, tmp_path, tiny_pretrained):
    stages = [
        rt.stage("sft", "sft", 0, ["arith_sft"], method="lora", max_steps=2, global_batch_size=8, micro_batch_size=8,
                 save_steps=1),
        rt.stage("export", "export", 1, [], init_from="sft", options={"merge_adapter": True, "dtype": "fp32"}),
        rt.stage("eval", "eval", 2, ["arith_eval"], init_from="sft", options={"metric": "exact_match",
                                                                            "max_new_tokens": 2}),
    ]
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 16
    plan["datasets"]["arith_eval"]["max_samples"] = 4
    return rt.write_bundle(tmp_path / "run", plan)


@pytest.mark.slow
def test_a_tampered_stage_output_is_refused_before_any_model_loads(rt, tmp_path, tiny_pretrained, capsys):
    from tkc.runtime.run import run_bundle

    bundle = _bundle(rt, tmp_path, tiny_pretrained)
    assert run_bundle(bundle, stage="sft") == 0
    out = bundle / "outputs" / "sft"
    sealed = json.loads((out / "manifest.json").read_text())
    assert sealed["bundle_hash"] == read_manifest(bundle)["bundle_hash"] and sealed["stage"] == "sft"
    assert {"model/adapter_model.safetensors", "model/adapter_config.json", "metrics.json", "run_record.json",
            "steps.jsonl"} <= set(sealed["files"])
    assert (out / "checkpoints").is_dir() and not any(f.startswith("checkpoints/") for f in sealed["files"])
    assert all(sealed["files"][rel] == sha256_file(out / rel) for rel in sealed["files"])
    capsys.readouterr()

    weights = out / "model" / "adapter_model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-1] ^= 1  # a tensor byte: peft would load it without complaint
    weights.write_bytes(bytes(data))
    assert run_bundle(bundle, stage="export") == 2
    said = capsys.readouterr().out
    assert f"{weights}: changed after the stage finished" in said
    assert f"expected sha256 {sealed['files']['model/adapter_model.safetensors']}" in said
    assert f"actual   sha256 {sha256_file(weights)}" in said
    assert not (bundle / "outputs" / "export" / "model").exists() and not (bundle / "outputs" / "export" / "DONE").exists()

    weights.write_bytes(original)
    (out / "model" / "extra.safetensors").write_bytes(b"not from the stage")
    shutil.move(out / "model" / "adapter_config.json", tmp_path / "adapter_config.json")
    assert run_bundle(bundle, stage="eval") == 2
    said = capsys.readouterr().out
    assert "model/extra.safetensors: added after the stage finished" in said
    assert "model/adapter_config.json: removed after the stage finished" in said
    assert not (bundle / "outputs" / "eval" / "DONE").exists()

    (out / "model" / "extra.safetensors").unlink()
    shutil.move(tmp_path / "adapter_config.json", out / "model" / "adapter_config.json")
    assert run_bundle(bundle) == 0  # restored: the later stages run, and seal their own outputs
    for name in ("export", "eval"):
        assert json.loads((bundle / "outputs" / name / "manifest.json").read_text())["stage"] == name
