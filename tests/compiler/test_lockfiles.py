"""Lockfiles: every hashed file pins each requirement with a hash; profiles name existing lockfiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tkc.catalog.registry import profiles
from tkc.compiler.launch import read_lock_pins

LOCKS = Path(__file__).resolve().parents[2] / "lockfiles"
HASHED = ["cpu", "dev"]
PLATFORM = ["cuda", "rocm", "npu"]


def requirements(text: str) -> list[str]:
    """Requirement entries with their continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", HASHED)
def test_every_requirement_is_pinned_with_a_hash(name: str) -> None:
    text = (LOCKS / f"{name}.txt").read_text()
    assert text.startswith("# ") and "scripts/lock.sh" in text.split("\n\n")[0]
    entries = requirements(text)
    assert len(entries) > 40
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9._-]+==\S+ ", entry), entry
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry


@pytest.mark.parametrize("name", HASHED)
def test_torch_is_the_local_cpu_build_of_2_13_0(name: str) -> None:
    text = (LOCKS / f"{name}.txt").read_text()
    assert read_lock_pins(text)["torch"] == "2.13.0+cpu"
    torch = next(e for e in requirements(text) if e.startswith("torch=="))
    assert len(re.findall(r"--hash=", torch)) == 1  # only the local +cpu wheel's hash: no CUDA build fits


def test_dev_lockfile_agrees_with_cpu_on_every_shared_pin() -> None:
    cpu = read_lock_pins((LOCKS / "cpu.txt").read_text())
    dev = read_lock_pins((LOCKS / "dev.txt").read_text())
    assert cpu.items() <= dev.items()
    assert {"pytest", "syrupy", "hypothesis", "ruff", "mypy", "pytest-timeout", "openai", "fastapi",
            "uvicorn"} <= dev.keys()


@pytest.mark.parametrize("name", PLATFORM)
def test_platform_lockfiles_are_fully_pinned(name: str) -> None:
    text = (LOCKS / f"{name}.txt").read_text()
    assert text.startswith("# ") and "WITHOUT hashes" in text.splitlines()[0]
    entries = requirements(text)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[^\s+]+", e) for e in entries), entries
    pins = read_lock_pins(text)
    assert pins["torch"] == "2.13.0" and pins["deepspeed"] == "0.19.8"
    cpu = read_lock_pins((LOCKS / "cpu.txt").read_text())
    assert {k: v for k, v in cpu.items() if k != "torch"}.items() <= pins.items()


def test_npu_lockfile_carries_torch_npu() -> None:
    assert read_lock_pins((LOCKS / "npu.txt").read_text())["torch-npu"] == "2.13.0"


def test_every_profile_names_an_existing_lockfile() -> None:
    for pid, prof in profiles().items():
        assert (LOCKS / f"{prof.lockfile}.txt").is_file(), pid


def test_read_lock_pins_of_the_real_lockfile_round_trips() -> None:
    pins = read_lock_pins((LOCKS / "cpu.txt").read_text())
    rendered = "".join(f"{name}=={version}\n" for name, version in pins.items())
    assert read_lock_pins(rendered) == pins
    assert all(name == name.lower() for name in pins)
