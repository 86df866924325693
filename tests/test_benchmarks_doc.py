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


def test_padding_neutral_speed_factors_out_the_batch_composition(bench_module):
    """A peer whose every step computes the same padded size at the same speed, with real tokens varying per
    batch: its plain per-step 90th percentile is its least padded batch; the padding-neutral one is its speed
    at its average padding, so a machine without noise shows no spread in it."""
    report = bench_module("report")
    real = [1000, 1400, 600, 1800, 1200, 900, 1500, 700, 1100, 1300, 800]  # real tokens of steps 1..11
    padded_step, seconds = 2048, 0.5  # every step: 2048 computed tokens in 0.5 s
    marks, pads, t, c, p = [], [], 0.0, 0, 0
    for tokens in real:
        t, c, p = t + seconds, c + tokens, p + padded_step
        marks.append([t, c])
        pads.append(p)
    config = {"kind": "sft", "method": "lora", "dataset_file": "a.json", "records": 44, "batch": 4, "cutoff": 512,
              "learning_rate": 1e-4, "seed": 42}
    losses = [6.5, 6.4]
    peer = {"deterministic": True, "losses_first_run": losses,
            "per_run": [{"ok": True, "step_marks": marks}]}
    tkc = {"step_tokens_per_s_p90": 2500.0, "per_run": [{"ok": True, "step_marks": [[1, 10], [2, 20], [3, 30]]}]}
    t = {"workloads": {"w": {"config": config, "tkc": tkc, "peer": peer, "ratios": {}}}}
    pad = {"workloads": {"w": {"config": config, "losses": losses, "padded_tokens_cumulative": pads}}}
    report.add_padding_neutral(t, pad)
    eff = sum(real[1:]) / (padded_step * (len(real) - 1))
    assert peer["padding_efficiency"] == pytest.approx(eff)
    assert peer[report.PAD_KEY] == pytest.approx(padded_step / seconds * eff)  # no spread in computed tokens/s
    assert peer["computed_step_rate_cv"] == pytest.approx(0.0, abs=1e-12)
    assert peer["step_rate_cv"] > 0.2
    assert t["workloads"]["w"]["ratios"][report.PAD_KEY] == pytest.approx(2500.0 / (padded_step / seconds * eff))
    # other batches (the losses differ): no padding-neutral figure rather than a wrong one
    peer2 = {**peer, "losses_first_run": [6.5, 6.3]}
    peer2.pop(report.PAD_KEY)
    t2 = {"workloads": {"w": {"config": config, "tkc": dict(tkc), "peer": peer2, "ratios": {}}}}
    report.add_padding_neutral(t2, pad)
    assert report.PAD_KEY not in peer2


def test_determinism_checks_need_their_premise(bench_module):
    """A 'resumed' run that was never killed, or a '2-rank' run that ran one rank, proves nothing: not measured."""
    det = bench_module("determinism")
    losses = [6.5, 6.4, 6.3, 6.2]
    runs = {
        "one_process_0": {"losses": losses}, "one_process_1": {"losses": list(losses)},
        "ranks_0": {"losses": list(losses), "world_size": 2}, "ranks_1": {"losses": list(losses), "world_size": 2},
        "kill9": {"losses": list(losses), "killed_with_sigkill": True, "steps_after_resume": 2},
    }
    ok = det._judge(runs)
    assert ok["repeat"]["identical"] and ok["ranks_kept"] and ok["kill9_resume"]["identical"]
    never_killed = det._judge({**runs, "kill9": {**runs["kill9"], "killed_with_sigkill": False}})
    assert never_killed["kill9_resume"]["identical"] is None
    from_scratch = det._judge({**runs, "kill9": {**runs["kill9"], "steps_after_resume": 4}})
    assert from_scratch["kill9_resume"]["identical"] is None
    one_rank = det._judge({**runs, "ranks_1": {**runs["ranks_1"], "world_size": 1}})
    assert one_rank["ranks_repeat"]["identical"] is None and one_rank["ranks_kept"] is None


def test_two_ranks_may_differ_from_one_process_only_by_float_order(bench_module):
    det = bench_module("determinism")
    losses = [0.70, 0.69, 0.71, 0.68]  # spread (std) 0.0112: 1% of it is 1.1e-4
    near = [x + 5e-6 for x in losses]
    far = [x + 5e-3 for x in losses]
    base = {"one_process_0": {"losses": losses}, "one_process_1": {"losses": list(losses)},
            "kill9": {"losses": list(losses), "killed_with_sigkill": True, "steps_after_resume": 2}}

    def judged(two: list[float]) -> dict:
        return det._judge({**base, "ranks_0": {"losses": two, "world_size": 2},
                           "ranks_1": {"losses": list(two), "world_size": 2}})

    assert judged(near)["ranks_kept"] is True
    assert judged(far)["ranks_kept"] is False
    assert judged(far)["ranks_repeat"]["identical"] is True  # repeatable, yet not the same training


def test_the_repeat_row_judges_each_of_its_figures(bench_module):
    report = bench_module("report")
    side = {"per_run": [{"ok": True}], "tokens_per_s": 1.0}

    def status(tokens_ratio, p90_ratio):
        w = {"tkc": side, "peer": side, "peer_default_threads": 2, "tkc_cpu_threads": 2,
             "ratios": {"tokens_per_s": tokens_ratio, report.PAD_KEY: p90_ratio}}
        (row,) = report._repeat_rows({"workloads": {"sft_full": w}})
        return row.rsplit("|", 2)[-2].strip()

    assert status(1.6, 1.7) == "met; met"
    assert status(1.6, 1.42) == "met; **not met**"  # a second figure under target is not hidden by the first
    assert status(1.45, None) == "**not met**; —"
