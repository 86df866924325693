"""Environment check: installed distributions against a bundle's pins (versions, extra packages, RECORD hashes);
`tkc run` refuses drift unless --allow-env-drift, which the run record keeps."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from tkc.compiler.launch import read_lock_pins
from tkc.runtime.envcheck import (
    Extra,
    Mismatch,
    check_environment,
    environment_drift,
    extra_packages,
    format_mismatches,
    modified_files,
    versions_match,
)

REPO = Path(__file__).resolve().parents[2]


def metadata_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def test_local_label_counts_as_equal_to_the_public_pin() -> None:
    assert versions_match("2.13.0", "2.13.0+cpu")
    assert versions_match("2.13", "2.13.0")
    assert versions_match("2.13.0+cpu", "2.13.0+cpu")
    assert not versions_match("2.13.0+cpu", "2.13.0+cu130")
    assert not versions_match("2.13.0", "2.12.1+cpu")


def test_check_reports_missing_and_different_versions_sorted() -> None:
    installed = {"torch": "2.13.0+cpu", "numpy": "2.4.0"}.get
    pins = {"torch": "2.13.0", "numpy": "2.4.6", "peft": "0.21.2"}
    assert check_environment(pins, installed) == [Mismatch("numpy", "2.4.6", "2.4.0"),
                                                  Mismatch("peft", "0.21.2", None)]


def test_format_mismatches_names_each_package_and_the_fix() -> None:
    text = format_mismatches([Mismatch("numpy", "2.4.6", "2.4.0"), Mismatch("peft", "0.21.2", None)])
    assert "numpy: pinned 2.4.6, installed 2.4.0" in text and "peft: pinned 0.21.2, not installed" in text
    assert "pip install --require-hashes -r env/requirements.lock" in text
    assert format_mismatches([]) == "environment matches the bundle's pins"


def test_this_interpreter_satisfies_the_torch_pin_of_the_cpu_lockfile() -> None:
    """The dev environment is installed from lockfiles/dev.txt, whose pins agree with cpu.txt."""
    pins = read_lock_pins((REPO / "lockfiles" / "cpu.txt").read_text())
    runtime = {k: pins[k] for k in ("torch", "transformers", "accelerate", "peft", "trl", "pydantic")}
    assert check_environment(runtime) == []
    assert check_environment({"torch": "2.13.0"}) == []


def test_the_dev_environment_runs_compiled_bundles_without_allow_env_drift() -> None:
    """`make demo` and the test suite: .venv (lockfiles/dev.txt) is a superset of cpu.txt; deepspeed, the one
    behaviour-changing extra it installs, is hidden by `tkc run` for a non-deepspeed bundle."""
    from tkc.runtime.run import unused_packages

    pins = read_lock_pins((REPO / "lockfiles" / "cpu.txt").read_text())
    from tkc.bundle.plan import structure_plan
    from tkc.compiler import compile_recipe

    plan = structure_plan(compile_recipe(REPO / "recipes" / "tiny_sft_dpo.yaml").resolved)  # lora, local
    assert environment_drift(pins, unused_packages(plan)) == []


def test_an_extra_behaviour_changing_package_is_drift_unless_pinned_or_hidden() -> None:
    installed = {"flash-attn": "2.8.3", "pytest": "9.0.0", "torch": "2.13.0"}.get
    pins = {"torch": "2.13.0"}
    assert extra_packages(pins, (), installed) == [Extra("flash-attn", "2.8.3")]
    assert extra_packages({**pins, "flash-attn": "2.8.3"}, (), installed) == []
    assert extra_packages(pins, ["flash_attn"], installed) == []
    if metadata_version("deepspeed"):  # the real interpreter: dev.txt installs deepspeed, cpu.txt does not pin it
        assert "deepspeed" in [e.name for e in extra_packages(pins)]
        assert "deepspeed" not in [e.name for e in extra_packages(pins, ["deepspeed"])]


def _fake_dist(site: Path, name: str) -> Path:
    """An installed distribution as pip leaves one: the module and its dist-info with METADATA and RECORD."""
    pkg = site / name
    pkg.mkdir(parents=True)
    files = {f"{name}/__init__.py": b"VALUE = 1\n", f"{name}/kernel.bin": b"\x00" * 64}
    for rel, data in files.items():
        (site / rel).write_bytes(data)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    rows = [f"{rel},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
            for rel, d in files.items()]
    (info / "RECORD").write_text("\n".join([*rows, f"{name}-1.0.dist-info/RECORD,,"]) + "\n")
    return pkg


@pytest.mark.parametrize("change", ["edit_py", "resize_binary", "delete"])
def test_a_modified_installed_file_of_a_pinned_package_is_drift(tmp_path, monkeypatch, change) -> None:
    name = f"tkcprobe_{change}"
    pkg = _fake_dist(tmp_path / "site", name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pins = {name: "1.0"}
    if change == "edit_py":  # same size, other bytes: only the hash sees it
        (pkg / "__init__.py").write_bytes(b"VALUE = 2\n")
        expected = f"{name}: {name}/__init__.py differs from its RECORD (sha256)"
    elif change == "resize_binary":
        (pkg / "kernel.bin").write_bytes(b"\x00" * 65)
        expected = f"{name}: {name}/kernel.bin has 65 bytes, its RECORD lists 64"
    else:
        (pkg / "__init__.py").unlink()
        expected = f"{name}: {name}/__init__.py is missing (listed in its RECORD)"
    assert [str(m) for m in modified_files(pins)] == [expected]


def test_an_intact_installed_package_is_not_drift(tmp_path, monkeypatch) -> None:
    _fake_dist(tmp_path / "site", "tkcprobe_intact")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert modified_files({"tkcprobe_intact": "1.0"}) == []


def _drifting_bundle(rt, tmp_path, tiny_pretrained) -> Path:
    st = rt.stage("sft", "sft", 0, ["arith_sft"], max_steps=1, global_batch_size=4, micro_batch_size=4, save_steps=0)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    plan["environment"]["pins"] = {"torch": "0.0.1"}
    return rt.write_bundle(tmp_path / "run", plan)


def test_tkc_run_refuses_drift_by_default_and_strict_env_is_accepted(rt, tmp_path, tiny_pretrained) -> None:
    bundle = _drifting_bundle(rt, tmp_path, tiny_pretrained)
    for extra in ([], ["--strict-env"]):
        proc = subprocess.run([str(Path(sys.executable).parent / "tkc"), "run", str(bundle), *extra],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "torch: pinned 0.0.1, installed" in proc.stdout and "--allow-env-drift" in proc.stdout
    assert not (bundle / "outputs" / "sft").exists()


def test_allow_env_drift_runs_and_records_the_drift(rt, tmp_path, tiny_pretrained, capsys) -> None:
    from tkc.runtime.run import run_bundle

    rt.install_data()
    bundle = _drifting_bundle(rt, tmp_path, tiny_pretrained)
    assert run_bundle(bundle, allow_env_drift=True) == 0
    assert "--allow-env-drift: running anyway" in capsys.readouterr().out
    record = json.loads((bundle / "outputs" / "sft" / "run_record.json").read_text())
    assert record["env_drift"] and record["env_drift"][0].startswith("torch: pinned 0.0.1, installed")
