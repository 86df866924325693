"""Fixtures of the `tkc serve` tests: the trained tiny bundle (once per session) and a running `tkc serve`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("serve_helpers", Path(__file__).parent / "serve_helpers.py")
assert _spec and _spec.loader
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return H.build_bundle(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    s = H.Server(bundle, tmp_path_factory.mktemp("server"), "--stage", "sft", "--max-inflight", "4",
                 "--max-tokens", "96", "--max-n", "4")
    yield s
    s.stop()
