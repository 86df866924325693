"""Environment check: installed distributions against a bundle's pins."""

from __future__ import annotations

from pathlib import Path

from tkc.compiler.launch import read_lock_pins
from tkc.runtime.envcheck import Mismatch, check_environment, format_mismatches, versions_match

REPO = Path(__file__).resolve().parents[2]


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
