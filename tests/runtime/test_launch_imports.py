"""`tkc run` and `tkc chat` start-up: optional packages the bundle does not use stay unimported and silent."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from tkc.bundle.plan import (
    ResolvedPlan,
    ResolvedPpoOptions,
    ResolvedQuantization,
    ResolvedRewardBundle,
    structure_plan,
)
from tkc.compiler import compile_recipe
from tkc.runtime.run import hidden_packages, unused_packages

REPO = Path(__file__).resolve().parents[2]

def _plan(**changes) -> ResolvedPlan:
    """A compiled CPU plan (one LoRA sft stage), with a quantized stage, a reward bundle or another launcher."""
    plan = structure_plan(compile_recipe(REPO / "recipes" / "tiny_sft_dpo.yaml").resolved)
    st = plan.stages[0]
    assert st.finetuning is not None
    if "quantization" in changes:
        st = attrs.evolve(st, finetuning=attrs.evolve(st.finetuning, quantization=changes["quantization"]))
    if "reward_bundle" in changes:  # a ppo stage's options carry the reward bundle
        opts = ResolvedPpoOptions("../rm:rm", changes["reward_bundle"], 1, 0.05, 0.2, 8, 1.0)
        st = attrs.evolve(st, kind="ppo", options=opts)
    if "launch" in changes:
        plan = attrs.evolve(plan, launch=attrs.evolve(plan.launch, kind=changes["launch"]))
    return attrs.evolve(plan, stages=(st,))


def test_unused_packages_follow_the_plan():
    assert unused_packages(_plan()) == ["bitsandbytes", "deepspeed"]
    assert unused_packages(_plan(quantization=ResolvedQuantization(4, "nf4", True))) == ["deepspeed"]
    # another bundle's rm stage may be quantized: its model must load as that bundle loads it
    assert unused_packages(_plan(reward_bundle=ResolvedRewardBundle("../rm", "x", "rm"))) == ["deepspeed"]
    assert unused_packages(_plan(launch="deepspeed")) == ["bitsandbytes"]
    assert unused_packages(None) == ["bitsandbytes", "deepspeed"]


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
