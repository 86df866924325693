"""tkc.runtime.gcpause: in `tkc run`'s own process the garbage collector is paused while a stage starts up, runs
again (start-up objects frozen) once the stage's model is loaded, and sees every object again when the stage ends."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from tkc.runtime import gcpause


@pytest.fixture
def fresh(monkeypatch):
    was = gc.isenabled()
    monkeypatch.setattr(gcpause, "_owned", False)
    monkeypatch.setattr(gcpause, "_paused", False)
    yield gcpause
    gc.unfreeze()
    if was:
        gc.enable()
    else:
        gc.disable()


def test_only_tkcs_own_process_is_paused(fresh):
    fresh.pause()
    assert gc.isenabled()  # a library caller's collector is left alone
    fresh.own()
    fresh.pause()
    assert not gc.isenabled() and fresh.paused()
    fresh.model_ready()
    assert gc.isenabled() and gc.get_freeze_count() > 0  # start-up objects out of later collections' way
    fresh.model_ready()  # a second loader in the same stage changes nothing
    assert gc.isenabled()
    fresh.stage_done()
    assert gc.isenabled() and gc.get_freeze_count() == 0  # what the stage leaves in cycles can be freed


def test_a_collector_someone_else_disabled_stays_disabled(fresh):
    gc.disable()
    fresh.own()
    fresh.pause()
    assert not fresh.paused()
    fresh.model_ready()
    fresh.stage_done()
    assert not gc.isenabled()


def test_a_stage_that_never_loads_a_model_restarts_the_collector(fresh):
    fresh.own()
    fresh.pause()
    fresh.stage_done()
    assert gc.isenabled() and not fresh.paused()


DRIVER = """
import gc, json, pathlib, sys, importlib.util as u
s = u.spec_from_file_location("h", {conftest!r}); h = u.module_from_spec(s); s.loader.exec_module(h); h.install_data()
from tkc.runtime import loop, model
seen = {{}}
load, step = model._from_bundle_model, loop._one_step
def load_(*a, **k):
    seen["while_loading"] = gc.isenabled()
    return load(*a, **k)
def step_(*a, **k):
    seen.setdefault("steps", []).append([gc.isenabled(), gc.get_freeze_count() > 0])
    return step(*a, **k)
model._from_bundle_model, loop._one_step = load_, step_
from tkc.runtime.run import run_bundle
code = run_bundle(pathlib.Path(sys.argv[1]), own_process=True)
seen["after"] = [gc.isenabled(), gc.get_freeze_count()]
print("SEEN " + json.dumps(seen))
sys.exit(code)
"""


@pytest.mark.slow
def test_tkc_run_pauses_the_collector_only_until_the_model_is_loaded(rt, tmp_path, tiny_pretrained):
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method="lora", max_steps=2, global_batch_size=4,
                  micro_batch_size=4, save_steps=0)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 8
    bundle = rt.write_bundle(tmp_path / "run", plan)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(conftest=rt.__file__))
    proc = subprocess.run([sys.executable, str(driver), str(bundle)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("SEEN "))[5:])
    assert seen["while_loading"] is False  # transformers' import and the model build ran without collections
    assert seen["steps"] == [[True, True], [True, True]]  # training collects, start-up objects frozen
    assert seen["after"] == [True, 0]  # the stage over: collector on, nothing left frozen
