"""A real run from the board: `tkc run` started as argv, its steps read, stopped with SIGTERM mid-run (it
checkpoints), resumed to the end; the runs list read again from disk by a fresh board; then chat (streamed,
with the bundle's template), export and the trained-span inspection on the trained bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import board_server as S  # tests/board/board_server.py (pytest puts this folder on sys.path)
import pytest
import requests

H = S.HEADERS
STEPS = 120  # a fraction of a second each: enough that the stop lands mid-run
pytestmark = pytest.mark.slow


def _until(check, what: str, limit: float = 240.0):
    """Poll until check() is truthy (a generous limit against hangs, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The workspace after a run was started, stopped mid-run and resumed to the end (asserted on the way)."""
    ws = S.make_workspace(tmp_path_factory.mktemp("ws"), steps=STEPS, save=STEPS)
    url, stop = S.start_board(ws)
    try:
        yield (ws, url, *_run_stop_resume(ws, url))
    finally:
        stop()


def _run(url: str, run_id: str) -> dict:
    return requests.get(f"{url}/api/runs/{run_id}", timeout=30).json()


def _run_stop_resume(ws: Path, url: str) -> tuple[str, str]:
    compiled = requests.post(f"{url}/api/compile", json={"path": "recipes/tiny.yaml"}, headers=H, timeout=60).json()
    first = requests.post(f"{url}/api/runs", json={"bundle": compiled["bundle"]}, headers=H, timeout=30).json()["id"]
    _until(lambda: len(requests.get(f"{url}/api/runs/{first}/steps", timeout=30).json()["steps"]) >= 2, "2 steps")
    again = requests.post(f"{url}/api/runs", json={"bundle": "runs/tiny"}, headers=H, timeout=30)
    assert again.status_code == 409  # one live run per bundle
    assert requests.post(f"{url}/api/runs/{first}/stop", headers=H, timeout=30).json() == {"ok": True}
    stopped = _until(lambda: (r := _run(url, first))["status"] != "running" and r, "the stop")
    assert (stopped["status"], stopped["returncode"]) == ("stopped", 143), stopped
    step = stopped["progress"]["step"]
    assert 2 <= step < STEPS and stopped["progress"]["total_steps"] == STEPS
    assert (ws / "runs/tiny/outputs/sft/checkpoints" / f"ckpt-{step}").is_dir()
    second = requests.post(f"{url}/api/runs/{first}/resume", headers=H, timeout=30).json()["id"]
    done = _until(lambda: (r := _run(url, second))["status"] != "running" and r, "the resumed run", 400)
    assert (done["status"], done["returncode"]) == ("finished", 0), requests.get(
        f"{url}/api/runs/{second}/log", timeout=30).json()["text"][-3000:]
    return first, second


def test_stop_checkpoints_and_resume_continues_from_it(trained):
    ws, url, first, second = trained
    log = requests.get(f"{url}/api/runs/{second}/log", timeout=30).json()["text"]
    assert "resum" in log.lower()
    steps = requests.get(f"{url}/api/runs/{second}/steps", params={"stage": "sft"}, timeout=30).json()
    assert [r["step"] for r in steps["steps"]] == list(range(1, STEPS + 1))  # each step once, none redone twice
    assert all(r["loss"] == r["loss"] for r in steps["steps"])
    tail = requests.get(f"{url}/api/runs/{second}/log", params={"offset": len(log.encode())}, timeout=30).json()
    assert tail["text"] == "" and tail["offset"] == len(log.encode())
    record = json.loads((ws / ".tkc-board/runs" / first / "run.json").read_text())
    assert record["argv"][1:] == ["-m", "tkc.cli.main", "run", str((ws / "runs/tiny").resolve())]


def test_the_runs_list_survives_a_board_restart(trained):
    ws, _, first, second = trained
    url, stop = S.start_board(ws)  # a second board over the same workspace: everything read from disk
    try:
        runs = {r["id"]: r for r in requests.get(f"{url}/api/runs", timeout=30).json()["runs"]}
    finally:
        stop()
    assert (runs[first]["status"], runs[second]["status"]) == ("stopped", "finished")
    assert runs[second]["metrics"]["sft"]["steps"] == STEPS and runs[second]["hash"] == runs[first]["hash"]
    # each run shows what it ended with: the stopped one no stage metrics and its own last step, not the resume's
    assert runs[first]["metrics"] == {} and 2 <= runs[first]["last_step"] < STEPS
    assert runs[second]["last_step"] == STEPS


def test_chat_streams_what_the_engine_generates(trained):
    ws, url, _, _ = trained
    messages = [{"role": "user", "content": "Sort the digits: 604735"}]
    with requests.post(f"{url}/api/chat", json={"bundle": "runs/tiny", "messages": messages, "max_tokens": 8},
                       headers=H, timeout=120, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["delta"] for line in lines[:-1])
    from tkc.runtime.infer import load_engine

    engine = load_engine(ws / "runs/tiny", "sft")
    try:
        assert text == "".join(engine.stream(messages, max_new_tokens=8, temperature=0.0, seed=42))
    finally:
        engine.close()
    assert text  # the tiny model says something


def test_export_writes_a_loadable_model_once(trained):
    ws, url, _, _ = trained
    out = requests.post(f"{url}/api/export", json={"bundle": "runs/tiny", "out": "exports/tiny"}, headers=H,
                        timeout=120).json()
    assert out == {"ok": True, "path": "exports/tiny", "stage": "sft"}
    folder = ws / "exports/tiny"
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    before = (folder / "model.safetensors").read_bytes()
    again = requests.post(f"{url}/api/export", json={"bundle": "runs/tiny", "out": "exports/tiny"}, headers=H,
                          timeout=120)
    assert again.status_code == 409 and (folder / "model.safetensors").read_bytes() == before


def test_inspect_shows_the_trained_span(trained):
    ws, url, _, _ = trained
    text = (ws / "recipes/tiny.yaml").read_text()
    out = requests.post(f"{url}/api/dataset/inspect", json={"recipe_path": "recipes/tiny.yaml", "text": text,
                                                            "dataset": "small_sft", "row": 1},
                        headers=H, timeout=120).json()
    trained_text = "".join(s["text"] for s in out["segments"] if s["trained"])
    first = json.loads((ws / "recipes/data/small_sft.jsonl").read_text().splitlines()[0])
    assert out["stage"] == "sft" and trained_text and "".join(s["text"] for s in out["segments"]) == out["text"]
    assert "user" in "".join(s["text"] for s in out["segments"] if not s["trained"])
    assert first["instruction"] not in trained_text  # the prompt is masked
