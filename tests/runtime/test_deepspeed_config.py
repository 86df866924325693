"""Generated launcher configs validate with the launchers' own classes: DeepSpeed's and accelerate's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tkc.catalog.registry import profiles
from tkc.compiler.launch import render_launch

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl", "npu": "hccl"}


def make_resolved(profile: str, kind: str, zero_stage: int, offload: bool, precision: str) -> dict[str, Any]:
    prof = profiles()[profile]
    world = prof.nodes * prof.devices_per_node
    train = {"global_batch_size": 4 * 2 * world, "micro_batch_size": 4, "gradient_accumulation_steps": 2,
             "world_size": world, "precision": precision, "max_grad_norm": 0.5, "logging_steps": 10,
             "gradient_checkpointing": True}
    return {"name": "demo", "hardware": {"accelerator": prof.accelerator},
            "stages": [{"name": "sft", "kind": "sft", "index": 0, "train": train}],
            "launch": {"kind": kind, "backend": BACKENDS[prof.accelerator], "nnodes": prof.nodes,
                       "nproc_per_node": prof.devices_per_node, "master_port": 29500,
                       "zero_stage": zero_stage, "offload": offload, "rdzv_timeout_s": 900}}


DS_CASES = [(p, z, o, prec) for p in ("a100_80g_x8", "h100_80g_x8_x4nodes", "mi300x_x8", "cpu")
            for z in (0, 1, 2, 3) for o in (False, True) for prec in ("bf16", "fp16", "fp32") if not (o and z == 0)]


@pytest.mark.parametrize(("profile", "zero", "offload", "precision"), DS_CASES)
def test_deepspeed_json_validates_with_deepspeed_config(monkeypatch: pytest.MonkeyPatch, profile: str,
                                                        zero: int, offload: bool, precision: str) -> None:
    ds_config = pytest.importorskip("deepspeed.runtime.config",
                                    reason="deepspeed not installed (lockfiles/dev.txt installs it)")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    resolved = make_resolved(profile, "deepspeed", zero, offload, precision)
    world = resolved["stages"][0]["train"]["world_size"]
    raw = json.loads(render_launch(resolved)["launch/deepspeed.json"])

    class DataParallel:  # DeepSpeed reads the data-parallel world size from an mpu when given one
        @staticmethod
        def get_data_parallel_world_size() -> int:
            return world

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    cfg = ds_config.DeepSpeedConfig(raw, mpu=DataParallel())
    assert cfg.world_size == world
    assert (cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps) == (
        8 * world, 4, 2)
    assert cfg.zero_optimization_stage == zero and cfg.gradient_clipping == 0.5
    assert cfg.bfloat16_config.enabled == (precision == "bf16")
    assert cfg.float16_config.enabled == (precision == "fp16")
    zero_cfg = DeepSpeedZeroConfig(**raw["zero_optimization"])
    assert (zero_cfg.offload_optimizer.device == "cpu") == offload
    if zero == 3:
        assert (zero_cfg.offload_param.device == "cpu") == offload


def test_deepspeed_json_has_no_auto_values() -> None:
    raw = render_launch(make_resolved("a100_80g_x8", "deepspeed", 3, True, "bf16"))["launch/deepspeed.json"]
    assert "auto" not in raw


@pytest.mark.parametrize("profile", sorted(profiles()))
@pytest.mark.parametrize("offload", [False, True])
def test_accelerate_fsdp_yaml_loads_with_accelerate(tmp_path: Path, profile: str, offload: bool) -> None:
    pytest.importorskip("accelerate", reason="accelerate not installed")
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    precision = "bf16" if profiles()[profile].supports_bf16 else "fp32"
    text = render_launch(make_resolved(profile, "fsdp", 0, offload, precision))["launch/accelerate_fsdp.yaml"]
    path = tmp_path / "accelerate_fsdp.yaml"
    path.write_text(text)
    cfg = ClusterConfig.from_yaml_file(str(path))
    prof = profiles()[profile]
    assert cfg.distributed_type == "FSDP" and cfg.num_machines == prof.nodes
    assert cfg.num_processes == prof.nodes * prof.devices_per_node
    assert cfg.fsdp_config["fsdp_offload_params"] is offload
    known = {a.dest for a in launch_command_parser()._actions}
    assert set(yaml.safe_load(text)["fsdp_config"]) <= known  # every key is one `accelerate launch` reads
