"""BENCHMARKS.md is generated from bench/results/*.json, never typed: the committed file is what the generator writes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def test_benchmarks_md_is_current_with_the_results_files():
    env = {k: v for k, v in os.environ.items() if k != "TKC_BENCH_RESULTS"}  # the committed results, not a trial's
    r = subprocess.run([sys.executable, str(BENCH / "report.py"), "--check"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return lambda name: importlib.import_module(name)


def test_loss_comparison_is_exact_and_length_aware(bench_module):
    compare = bench_module("determinism").compare
    same = compare([6.25, 6.125], [6.25, 6.125])
    assert same["identical"] is True and same["max_abs_diff"] == 0.0
    off = compare([6.25, 6.125 + 1e-12], [6.25, 6.125])
    assert off["identical"] is False and 0 < off["max_abs_diff"] < 1e-11
    short = compare([6.25], [6.25, 6.125])  # a resumed run that lost steps is not identical
    assert short["identical"] is False and short["steps"] == [1, 2]
    assert compare(None, [1.0])["identical"] is None


def test_determinism_is_judged_on_every_check(bench_module):
    report = bench_module("report")
    ok = {"repeat": {"identical": True}, "ranks_kept": True, "kill9_resume": {"identical": True}}
    assert report._det_ok(ok) is True
    assert report._det_ok({**ok, "kill9_resume": {"identical": False}}) is False
    assert report._det_ok({**ok, "ranks_kept": False}) is False
    assert report._det_ok({**ok, "ranks_kept": None}) is None  # not measured is not "met"
