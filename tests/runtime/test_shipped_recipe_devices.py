"""Every shipped recipe's bundle places its training stages on the device its hardware names and shards them as its
launcher declares: the plan's stage device, the strategy `tkc run` picks for each training stage on a rank of the
launch, the launch script that starts it (torchrun for several processes, deepspeed and fsdp included) and, for
DeepSpeed, the ZeRO stage in the bundle's own config. Read from the compiled bundle, as the runtime reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tkc.bundle.plan import structure_plan
from tkc.compiler import compile_recipe
from tkc.runtime import strategy
from tkc.runtime.context import RunContext
from tkc.runtime.dist import DistInfo

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
DEVICE = {"cpu": "cpu", "cuda": "cuda", "rocm": "cuda", "npu": "npu"}


def _expected_strategy(kind: str, world: int) -> str:
    if kind == "deepspeed":
        return "DeepSpeedStrategy"
    if kind == "fsdp" and world > 1:
        return "FSDPStrategy"
    return "DDPStrategy" if world > 1 else "Strategy"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_each_training_stage_is_placed_and_sharded_as_declared(recipe: Path, tmp_path: Path):
    compiled = compile_recipe(recipe)
    plan = structure_plan(json.loads(compiled.files["resolved.json"]))
    launch, world = plan.launch, plan.launch.world_size
    ctx = RunContext(tmp_path, plan, tmp_path, "hash", dist=DistInfo(rank=0, world_size=world))
    trained = [st for st in plan.stages if st.train is not None]
    assert trained, recipe.name
    for st in trained:
        assert st.device == DEVICE[plan.hardware.accelerator], (recipe.name, st.name)
        multi = world > 1 and st.kind not in ("ppo", "grpo")  # rollout stages run in one process (ROLL001)
        chosen = strategy._choose(ctx if multi else RunContext(tmp_path, plan, tmp_path, "hash"), st)
        assert chosen.__name__ == _expected_strategy(launch.kind, world if multi else 1), (recipe.name, st.name)
        script = compiled.files[f"launch/{st.index:02d}-{st.name}.sh"].decode()
        assert ("torchrun" in script) == multi and "deepspeed \\" not in script and "accelerate launch" not in script
        if launch.kind == "deepspeed":
            configs = [v for k, v in compiled.files.items() if k.startswith("launch/deepspeed")]
            assert configs and all(json.loads(c)["zero_optimization"]["stage"] == launch.zero_stage for c in configs)
