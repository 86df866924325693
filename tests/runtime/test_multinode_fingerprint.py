"""The pre-training fingerprint check, fed fingerprints directly: what differs, which nodes are named, which exit."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from pathlib import Path

import pytest

from tkc.runtime.context import EXIT_BUNDLE_CHANGED, EXIT_ENV_MISMATCH
from tkc.runtime.fingerprint import Fingerprint, compare, environment_facts, join_failed

ENV = {"python": "3.11.9", "torch": "2.13.0+cpu", "cuda": None, "driver": None, "tkc": "0.1.0",
       "lockfile sha256": "ab" * 32, "package transformers": "5.23.0"}
HASH = "0" * 64


def fp(rank: int, node: int, host: str, *, bundle: str = HASH, refused: tuple[str, ...] = (), **env) -> Fingerprint:
    return Fingerprint(rank, str(node), host, bundle, {**ENV, **env}, refused)


def test_agreeing_ranks_train() -> None:
    assert compare([fp(r, r // 2, f"h{r // 2}") for r in range(4)]) is None


def test_another_bundle_is_exit_3_naming_node_host_and_both_hashes() -> None:
    other = "f" * 64
    verdict = compare([fp(1, 1, "gpu-b", bundle=other), fp(0, 0, "gpu-a")])
    assert verdict is not None and verdict.code == EXIT_BUNDLE_CHANGED
    assert f"bundle hash: '{other}' on node 1 (host gpu-b, rank 1), but '{HASH}' on node 0 (host gpu-a, rank 0)" \
        in verdict.message
    assert "every rank stops before training (exit 3)" in verdict.message
    assert "start every node from the same bundle" in verdict.message


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("torch", "2.12.1+cu121", "'2.12.1+cu121'"), ("cuda", "12.1", "'12.1'"), ("driver", "nvidia 550.54.15", None),
    ("package transformers", None, "absent"), ("tkc", "0.2.0", None), ("python", "3.12.1", None)])
def test_an_environment_difference_is_exit_4_and_named(field: str, value: str | None, shown: str | None) -> None:
    ranks = [fp(0, 0, "a"), fp(1, 0, "a"), fp(2, 1, "b", **{field: value}), fp(3, 1, "b", **{field: value})]
    verdict = compare(ranks)
    assert verdict is not None and verdict.code == EXIT_ENV_MISMATCH
    mine = repr(ENV[field]) if ENV[field] is not None else "absent"
    line = f"  {field}: {shown or repr(value)} on node 1 (host b, rank 2-3), but {mine} on node 0 (host a, rank 0)"
    assert line in verdict.message.splitlines()
    assert "bundle hash" not in verdict.message and "install the bundle's env/requirements.lock" in verdict.message


def test_bundle_and_environment_differences_are_all_listed_and_exit_3() -> None:
    verdict = compare([fp(0, 0, "a"), fp(1, 1, "b", bundle="e" * 64, torch="2.12.0"), fp(2, 2, "c", tkc="9")])
    assert verdict is not None and verdict.code == EXIT_BUNDLE_CHANGED
    lines = verdict.message.splitlines()
    assert [ln.split(":")[0].strip() for ln in lines[1:-1]] == ["bundle hash", "tkc", "torch"]
    assert "on node 2 (host c, rank 2)" in lines[2]


def test_drift_refused_on_any_rank_stops_all_even_when_they_agree() -> None:
    """Every node runs the same wrong transformers: nobody differs from rank 0, yet the environment is refused."""
    drift = ("transformers: pinned 5.23.0, installed 5.22.0",)
    verdict = compare([fp(0, 0, "a", refused=drift), fp(1, 1, "b", refused=drift)])
    assert verdict is not None and verdict.code == EXIT_ENV_MISMATCH
    assert "node 1 (host b), rank 1: its environment differs from the bundle's pins" in verdict.message
    assert drift[0] in verdict.message


def test_fingerprints_travel_as_plain_data_and_tolerate_an_older_peer() -> None:
    one = fp(3, 1, "b", refused=("x",))
    assert Fingerprint.from_dict(one.to_dict()) == one
    old = Fingerprint.from_dict({"rank": 1, "bundle_hash": HASH, "env": {"tkc": "0.0.9"}})
    verdict = compare([fp(0, 0, "a"), old])
    assert verdict is not None and "tkc: '0.0.9' on node ? (host ?, rank 1), but '0.1.0'" in verdict.message


def test_environment_facts_read_this_process(tmp_path: Path) -> None:
    import torch

    import tkc

    lock = tmp_path / "requirements.lock"
    lock.write_text("pyyaml==6.0.3\n")
    facts = environment_facts(lock, ["pyyaml", "torch", "not-installed-pkg"])
    assert facts["python"] == platform.python_version() and facts["torch"] == torch.__version__
    assert facts["tkc"] == tkc.__version__ and facts["cuda"] == torch.version.cuda
    assert facts["lockfile sha256"] == hashlib.sha256(b"pyyaml==6.0.3\n").hexdigest()
    assert facts["package pyyaml"] == importlib.metadata.version("pyyaml")
    assert facts["package not-installed-pkg"] is None and "package torch" not in facts


def test_a_timeout_names_the_setting_that_ended_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TKC_DIST_TIMEOUT_S", "60")
    text = join_failed(RuntimeError("Timed out after 61 seconds waiting for clients. 1/2 clients joined.\nmore"))
    assert text.startswith("Timed out after 61 seconds waiting for clients. 1/2 clients joined: a rank did not")
    assert "TKC_DIST_TIMEOUT_S=60 s (launch.rdzv_timeout_s)" in text and "more" not in text
    assert join_failed(RuntimeError("backend nccl needs a CUDA/ROCm device")) == \
        "backend nccl needs a CUDA/ROCm device"
    monkeypatch.delenv("TKC_DIST_TIMEOUT_S")
    assert "within the default 1800 s (launch.rdzv_timeout_s)" in join_failed(RuntimeError("Socket Timeout"))


@pytest.mark.parametrize(("text", "expected"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version: 12.3\n",
     "nvidia 550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build\n", "nvidia 565.57.01")])
def test_driver_version_is_read_from_the_kernel_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                                       expected: str) -> None:
    from tkc.runtime import fingerprint

    (tmp_path / "nvidia").write_text(text)
    monkeypatch.setattr(fingerprint, "DRIVER_FILES", {"nvidia": str(tmp_path / "nvidia"),
                                                      "amdgpu": str(tmp_path / "none")})
    assert fingerprint._driver_version() == expected
    monkeypatch.setattr(fingerprint, "DRIVER_FILES", {"nvidia": str(tmp_path / "none")})
    assert fingerprint._driver_version() is None


def test_agreeing_ranks_are_told_where_rank_0_writes() -> None:
    from tkc.runtime.fingerprint import agreed

    text = agreed([fp(1, 0, "b"), fp(0, 1, "a"), fp(2, 1, "a")])
    assert text == ("3 ranks on 2 node(s) run bundle 000000000000 in the same environment; rank 0, which writes "
                    "outputs/ and checkpoints, runs on node 1 (host a)")
