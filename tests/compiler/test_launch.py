"""Launch rendering: every profile x launcher renders, deterministically, with scripts bash accepts."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tkc.catalog.registry import profiles
from tkc.compiler.launch import LaunchError, read_lock_pins, render_launch, stage_script

LAUNCHERS = ["local", "torchrun", "deepspeed", "fsdp", "slurm", "kubernetes"]
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl", "npu": "hccl"}
REPO = Path(__file__).resolve().parents[2]


def make_resolved(profile: str, kind: str, *, stage_names: tuple[str, ...] = ("sft", "export"),
                  zero_stage: int | None = None, offload: bool = False) -> dict[str, Any]:
    """A resolved plan as the compiler writes it, reduced to what launch rendering reads."""
    prof = profiles()[profile]
    nodes, per_node = (1, 1) if kind == "local" else (prof.nodes, prof.devices_per_node)
    world = nodes * per_node
    train = {"global_batch_size": 8 * world, "micro_batch_size": 4, "gradient_accumulation_steps": 2,
             "world_size": world, "precision": "bf16" if prof.supports_bf16 else "fp32",
             "max_grad_norm": 1.0, "logging_steps": 1, "gradient_checkpointing": False}
    kinds = ["sft"] * (len(stage_names) - 1) + ["export"]
    stages = [{"name": n, "kind": k, "index": i, **({"train": dict(train)} if k != "export" else {})}
              for i, (n, k) in enumerate(zip(stage_names, kinds, strict=True))]
    hardware = prof.model_dump(exclude={"id", "description", "lockfile", "default_launch"})
    return {"name": "demo", "hardware": {"profile": profile, **hardware}, "stages": stages,
            "launch": {"kind": kind, "backend": BACKENDS[prof.accelerator], "nnodes": nodes,
                       "nproc_per_node": per_node, "world_size": world, "master_port": 29500,
                       "zero_stage": 2 if kind == "deepspeed" and zero_stage is None else zero_stage,
                       "offload": offload, "rdzv_timeout_s": 900, "slurm": None, "kubernetes": None}}


CASES = [(p, k) for p in sorted(profiles()) for k in LAUNCHERS]


@pytest.mark.parametrize(("profile", "kind"), CASES)
def test_every_profile_renders_every_launcher(profile: str, kind: str) -> None:
    files = render_launch(make_resolved(profile, kind))
    assert {"launch/00-sft.sh", "launch/01-export.sh"} <= set(files)
    expected = {"deepspeed": "launch/deepspeed.json", "fsdp": "launch/accelerate_fsdp.yaml",
                "slurm": "launch/slurm.sbatch", "kubernetes": "launch/k8s.yaml"}.get(kind)
    if expected:
        assert expected in files
    for path, text in files.items():
        assert path.startswith("launch/") and text.endswith("\n")
        assert "/work/" not in text and str(REPO) not in text
    for path in (p for p in files if p.endswith(".sh")):
        assert files[path].startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail\n" in files[path] and 'cd "$(dirname "$0")/.."' in files[path]
    for path in (p for p in files if p.endswith((".sh", ".sbatch"))):
        subprocess.run(["bash", "-n"], input=files[path], text=True, check=True)


@pytest.mark.parametrize(("profile", "kind"), CASES)
def test_rendering_is_byte_identical(profile: str, kind: str) -> None:
    resolved = make_resolved(profile, kind)
    first = render_launch(copy.deepcopy(resolved))
    assert render_launch(resolved) == first
    assert list(first) == sorted(first)


def test_local_script_is_tkc_run_of_the_stage() -> None:
    text = render_launch(make_resolved("cpu", "local"))["launch/00-sft.sh"]
    assert text.rstrip().endswith('exec tkc run . --stage sft "$@"')


def test_multinode_torchrun_reads_master_from_env_with_timeouts() -> None:
    text = render_launch(make_resolved("h100_80g_x8_x4nodes", "torchrun"))["launch/00-sft.sh"]
    assert 'MASTER_ADDR="${MASTER_ADDR:-' in text and "--nnodes 4" in text and "--nproc-per-node 8" in text
    assert '--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"' in text and "join_timeout=900" in text
    assert "--max-restarts 0" in text and "-m tkc.cli.main run . --stage sft" in text


def test_npu_uses_hccl_env_and_visible_devices() -> None:
    text = render_launch(make_resolved("ascend_910b_x8", "torchrun"))["launch/00-sft.sh"]
    assert 'ASCEND_RT_VISIBLE_DEVICES="${ASCEND_RT_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"' in text
    assert "HCCL_CONNECT_TIMEOUT=900" in text and "exec torchrun" in text


def test_non_training_stages_run_as_one_process() -> None:
    files = render_launch(make_resolved("a100_80g_x8", "torchrun"))
    assert "exec torchrun" in files["launch/00-sft.sh"]
    assert "exec tkc run . --stage export" in files["launch/01-export.sh"]


NASTY = ("my stage's \"best\" $(rm -rf ~) `x`", "export")


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_quoting_survives_spaces_quotes_and_substitutions(tmp_path: Path, kind: str) -> None:
    resolved = make_resolved("h100_80g_x8_x4nodes", kind, stage_names=NASTY)
    resolved["name"] = "run with\nnewline; echo pwned"
    files = render_launch(resolved)
    script = files[stage_script(resolved["stages"][0])]
    assert all("\necho pwned" not in text for text in files.values())
    assert "--stage 'my stage'\"'\"'s \"best\" $(rm -rf ~) `x`' \"$@\"" in script
    for path, text in files.items():
        if path.endswith((".sh", ".sbatch")):
            (tmp_path / "s.sh").write_text(text)
            subprocess.run(["bash", "-n", str(tmp_path / "s.sh")], check=True)


def test_quoted_stage_name_reaches_tkc_intact(tmp_path: Path) -> None:
    """Run the local script with a fake `tkc` on PATH and compare the argv it receives."""
    resolved = make_resolved("cpu", "local", stage_names=NASTY)
    script = render_launch(resolved)[stage_script(resolved["stages"][0])]
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "x.sh").write_text(script)
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "tkc"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(tmp_path / "launch" / "x.sh"), "--source-root", "a b"], check=True,
                         capture_output=True, text=True, env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert out.stdout.split("\n")[:-1] == [str(tmp_path), "run", ".", "--stage", NASTY[0], "--source-root", "a b"]


def test_stage_file_names_are_safe_and_distinct() -> None:
    assert stage_script({"name": "sft", "index": 3}) == "launch/03-sft.sh"
    a, b = stage_script({"name": "a b", "index": 0}), stage_script({"name": "a_b", "index": 0})
    assert a != b and " " not in a


def test_k8s_is_an_indexed_job_with_n_pods() -> None:
    text = render_launch(make_resolved("h100_80g_x8_x4nodes", "kubernetes"))["launch/k8s.yaml"]
    doc = yaml.safe_load(text)
    service, job = doc["items"]
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == "tkc-demo-0.tkc-demo" and env["MASTER_PORT"] == "29500"
    assert "&id" not in text


def test_k8s_names_are_dns_labels() -> None:
    resolved = make_resolved("mi300x_x8", "kubernetes")
    resolved["name"] = "My_Run" * 20
    job = yaml.safe_load(render_launch(resolved)["launch/k8s.yaml"])["items"][1]
    name = job["metadata"]["name"]
    assert len(name) <= 52 and name == name.lower() and not name.endswith("-")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"amd.com/gpu": 8}


def test_slurm_has_nodes_gres_kill_on_bad_exit_and_first_node_master() -> None:
    text = render_launch(make_resolved("h100_80g_x8_x4nodes", "slurm"))["launch/slurm.sbatch"]
    assert "#SBATCH --nodes=4\n" in text and "#SBATCH --gres=gpu:8\n" in text
    first_host = 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"; ' + "MASTER_ADDR=\"${MASTER_ADDR%%$'\\n'*}\""
    assert first_host in text  # the first line, read whole: no `| head` under pipefail (SIGPIPE)
    assert "srun --kill-on-bad-exit=1 --nodes=4 --ntasks-per-node=1 bash launch/00-sft.sh" in text
    assert "srun --kill-on-bad-exit=1 --nodes=1 --ntasks=1 bash launch/01-export.sh" in text
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in text and "TKC_DIST_TIMEOUT_S=900" in text
    if shutil.which("bash"):
        assert text.startswith("#!/usr/bin/env bash\n")


def test_slurm_rejects_values_that_would_break_directives() -> None:
    resolved = make_resolved("h100_80g_x8_x4nodes", "slurm")
    resolved["launch"]["slurm"] = {"partition": "gpu\n#SBATCH --x", "account": None, "time": "1:00:00"}
    with pytest.raises(LaunchError, match="partition"):
        render_launch(resolved)


def test_deepspeed_batch_sizes_must_multiply_out() -> None:
    resolved = make_resolved("a100_80g_x8", "deepspeed")
    resolved["stages"][0]["train"]["global_batch_size"] = 60
    with pytest.raises(LaunchError, match="global batch 60"):
        render_launch(resolved)


def test_per_stage_launcher_configs_when_stages_differ() -> None:
    resolved = make_resolved("a100_80g_x8", "deepspeed", stage_names=("sft", "dpo", "export"))
    assert [p for p in render_launch(resolved) if p.endswith(".json")] == ["launch/deepspeed.json"]
    resolved["stages"][1]["train"]["precision"] = "fp16"
    files = render_launch(resolved)
    assert [p for p in files if p.endswith(".json")] == ["launch/deepspeed-00-sft.json",
                                                         "launch/deepspeed-01-dpo.json"]
    assert "TKC_DEEPSPEED_CONFIG=launch/deepspeed-01-dpo.json" in files["launch/01-dpo.sh"]


def test_read_lock_pins_round_trip() -> None:
    pins = {"torch": "2.13.0+cpu", "pydantic-core": "2.50.4", "pyyaml": "6.0.3"}
    text = "# header\n" + "".join(f"{n}=={v} \\\n    --hash=sha256:{'0' * 64}\n" for n, v in pins.items())
    assert read_lock_pins(text) == dict(sorted(pins.items()))
    assert read_lock_pins("PyYAML==6.0.3\nPydantic_Core==2.50.4 ; python_version >= '3.11'\n-r x.in\n") == {
        "pydantic-core": "2.50.4", "pyyaml": "6.0.3"}


def test_rendering_imports_no_heavy_library() -> None:
    code = ("import sys; from tkc.compiler.launch import render_launch; "
            "render_launch({'name': 'x', 'stages': [], 'launch': {'kind': 'deepspeed'}}); "
            "heavy = {'torch', 'transformers', 'accelerate', 'deepspeed', 'datasets'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
