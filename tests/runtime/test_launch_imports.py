"""`tkc run` and `tkc chat` start-up: optional packages the bundle does not use stay unimported and silent."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tkc.runtime.run import hidden_packages, unused_packages

PLAIN = {"launch": {"kind": "local"},
         "stages": [{"name": "sft", "finetuning": {"method": "lora", "quantization": None}, "options": {}}]}


def _with(**changes) -> dict:
    plan = json.loads(json.dumps(PLAIN))
    st = plan["stages"][0]
    if "quantization" in changes:
        st["finetuning"]["quantization"] = changes["quantization"]
    if "reward_bundle" in changes:
        st["options"]["reward_bundle"] = changes["reward_bundle"]
    if "launch" in changes:
        plan["launch"]["kind"] = changes["launch"]
    return plan


def test_unused_packages_follow_the_plan():
    assert unused_packages(PLAIN) == ["bitsandbytes", "deepspeed"]
    assert unused_packages(_with(quantization={"bits": 4, "quant_type": "nf4", "double_quant": True})) == ["deepspeed"]
    # another bundle's rm stage may be quantized: its model must load as that bundle loads it
    assert unused_packages(_with(reward_bundle={"path": "../rm", "bundle_hash": "x", "stage": "rm"})) == ["deepspeed"]
    assert unused_packages(_with(launch="deepspeed")) == ["bitsandbytes"]


def test_hidden_packages_blocks_imports_then_restores():
    name = "tabnanny"  # a stdlib module nothing in the test process imports
    assert name not in sys.modules and importlib.util.find_spec(name) is not None
    with hidden_packages([name, "json"]) as hid:
        assert hid == [name]  # json is already imported: it stays
        assert importlib.util.find_spec(name) is None  # how transformers/peft/accelerate test for a package
        with pytest.raises(ImportError):
            importlib.import_module(name)
        assert importlib.import_module("json") is json
    assert name not in sys.modules
    assert importlib.import_module(name).__name__ == name
    del sys.modules[name]


NOISE = ("Setting accelerator", "kernels", "FutureWarning", "bitsandbytes", "Traceback", "Loading weights")
HEAVY = ("deepspeed", "bitsandbytes", "trl")

DRIVER = """
import json, sys
from tkc.cli.main import app
code = 0
try:
    app(json.loads(sys.argv[1]))
except SystemExit as e:
    code = e.code
import torch
inductor = sys.modules.get("torch._inductor.config")
print("RESULT " + json.dumps({"code": code, "heavy": sorted(m for m in sys.argv[2].split(",") if m in sys.modules),
                              "deterministic": torch.are_deterministic_algorithms_enabled(),
                              "inductor_deterministic": None if inductor is None else inductor.deterministic}))
"""


@pytest.mark.slow
def test_tkc_run_imports_no_unused_optional_package_and_prints_no_noise(rt, tmp_path, tiny_pretrained):
    """A full-weights stage (its save goes through transformers' unwrap_model, which imports deepspeed when it
    can) and a LoRA stage (peft imports bitsandbytes when it can), through the `tkc run` command."""
    small = {"max_steps": 1, "global_batch_size": 4, "micro_batch_size": 4, "save_steps": 0}
    stages = [rt.stage("full", "sft", 0, ["arith_sft"], method="full", **small),
              rt.stage("lora", "sft", 1, ["arith_sft"], method="lora", **small)]
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 8
    bundle = rt.write_bundle(tmp_path / "run", plan)
    result, out = _drive(["run", str(bundle)])
    assert (bundle / "outputs" / "full" / "model").is_dir() and (bundle / "outputs" / "lora" / "DONE").exists()
    assert result["deterministic"] is True
    assert result["inductor_deterministic"] in (None, True)
    # `tkc chat` on the LoRA stage (peft loads the adapter) is the CLI's own process too
    _drive(["chat", str(bundle), "--stage", "lora", "--max-new-tokens", "4"], stdin="hello\n")


def _drive(argv: list[str], stdin: str = "") -> tuple[dict, str]:
    """Run the tkc CLI with `argv` in a fresh interpreter; it must succeed, import no unused optional package
    and print none of the known noise."""
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argv), ",".join(HEAVY)], input=stdin,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout[-2000:] + r.stderr[-2000:]
    line = next((s for s in r.stdout.splitlines() if s.startswith("RESULT ")), None)
    assert line is not None, out
    result = json.loads(line[len("RESULT "):])
    assert result["code"] in (0, None), out
    assert result["heavy"] == [], f"{argv[0]} imported although the bundle does not use them: {result['heavy']}"
    noisy = [s for s in (r.stdout + r.stderr).splitlines() if any(n in s for n in NOISE)]
    assert not noisy, noisy
    return result, out
