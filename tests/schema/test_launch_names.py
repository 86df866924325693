"""Slurm and Kubernetes values a recipe hands to other systems: every bad one a positioned error at its own key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tkc.compiler import compile_recipe
from tkc.compiler.launch import _slug
from tkc.schema.diagnostics import CompileError
from tkc.schema.names import is_dns1123_label, is_image_reference

REPO = Path(__file__).resolve().parents[2]


def _compile_errors(tmp_path: Path, recipe: str, old: str, new: str) -> list:
    shutil.copytree(REPO / "recipes", tmp_path / "r")
    path = tmp_path / "r" / recipe
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(CompileError) as info:
        compile_recipe(path)
    return info.value.diagnostics


def test_slurm_errors_all_reported_each_at_its_key(tmp_path):
    diags = _compile_errors(tmp_path, "llama3_1_70b_qlora_multinode_slurm.yaml",
                            'slurm: {partition: gpu, account: research, time: "48:00:00"}',
                            'slurm: {partition: "gpu;reboot", account: "a b", time: "48:00:00\\n#SBATCH -x"}')
    by_path = {d.path: d for d in diags}
    assert set(by_path) == {"launch.slurm.partition", "launch.slurm.account", "launch.slurm.time"}
    assert [by_path[k].col for k in ("launch.slurm.partition", "launch.slurm.account", "launch.slurm.time")] == [
        11, 36, 52]   # each at its own key
    assert all(d.line == 25 and d.code == "SCHEMA002" for d in diags)
    assert "only letters, digits and _.,:+-" in by_path["launch.slurm.partition"].message
    assert "not a Slurm time limit" in by_path["launch.slurm.time"].message


@pytest.mark.parametrize("time", ["30", "30:00", "48:00:00", "2-00", "2-12:30", "2-12:30:00", "UNLIMITED"])
def test_slurm_time_formats_accepted(tmp_path, time):
    shutil.copytree(REPO / "recipes", tmp_path / "r")
    path = tmp_path / "r" / "llama3_1_70b_qlora_multinode_slurm.yaml"
    path.write_text(path.read_text().replace('time: "48:00:00"', f'time: "{time}"'))
    assert "launch/slurm.sbatch" in compile_recipe(path).files


def test_kubernetes_namespace_and_image_are_positioned_errors(tmp_path):
    diags = _compile_errors(tmp_path, "qwen3_8b_sft_kubernetes.yaml",
                            'kubernetes: {image: "registry.example.com/tkc:0.1.0-cuda", namespace: training}',
                            'kubernetes: {image: "tkc:latest; curl x | sh", namespace: Training_Team}')
    by_path = {d.path: d for d in diags}
    assert set(by_path) == {"launch.kubernetes.image", "launch.kubernetes.namespace"}
    assert by_path["launch.kubernetes.image"].line == 24 and "container image reference" in \
        by_path["launch.kubernetes.image"].message
    assert "DNS-1123" in by_path["launch.kubernetes.namespace"].message


@pytest.mark.parametrize("image", ["tkc:latest", "registry.example.com/tkc:0.1.0-cuda", "localhost:5000/a/b:1",
                                   "nvcr.io/nvidia/pytorch:24.05-py3", "ghcr.io/o/i:v1@sha256:" + "0" * 64])
def test_image_references_accepted(image):
    assert is_image_reference(image)


@pytest.mark.parametrize("image", ["tkc latest", "tkc:latest;rm -rf /", "Tkc:latest", "$(id)", "tkc:", "x\n",
                                   "a/../b", "tkc@sha256:short", "", "x" * 600])
def test_image_references_refused(image):
    assert not is_image_reference(image)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,63}", fullmatch=True))
def test_resource_names_from_any_recipe_name_are_dns1123_labels(name):
    """Derived names are folded (plus a hash when folding changed them); always a label, short enough for pods."""
    job = _slug(f"tkc-{name}", limit=52)
    assert is_dns1123_label(job) and len(job) <= 52
    assert is_dns1123_label(f"{job}-4095")


def test_launch_rendering_backstop_names_every_bad_value():
    """What reaches #SBATCH lines and the manifest is checked again (a trailing newline included)."""
    from tkc.compiler.launch import LaunchError, render_launch

    slurm = compile_recipe(REPO / "recipes" / "llama3_1_70b_qlora_multinode_slurm.yaml").resolved
    slurm["launch"]["slurm"] = {"partition": "gpu\n", "account": "a b", "time": "48:00:00\n"}
    with pytest.raises(LaunchError, match=r"partition 'gpu\\n'; launch.slurm.account 'a b'; launch.slurm.time"):
        render_launch(slurm)
    k8s = compile_recipe(REPO / "recipes" / "qwen3_8b_sft_kubernetes.yaml").resolved
    k8s["launch"]["kubernetes"] = {"image": "x;id", "namespace": "Team"}
    with pytest.raises(LaunchError, match=r"namespace 'Team'; launch.kubernetes.image 'x;id'"):
        render_launch(k8s)
