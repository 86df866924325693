"""The board attacked at the HTTP level against a real uvicorn server: path tricks, request tricks, CSRF and DNS
rebinding tricks, token tricks, run tricks (one live run per bundle, across boards), huge logs, over-long chats,
exports onto existing folders; answers never carry a traceback or an absolute path."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import board_server as S  # tests/board/board_server.py (pytest puts this folder on sys.path)
import pytest
import requests

from tkc.bundle import run_lock

H = S.HEADERS
TOKEN = S.TOKEN
TIMEOUT = 60


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = S.make_workspace(tmp_path_factory.mktemp("ws"))
    os.mkfifo(root / "recipes" / "fifo.yaml")
    os.mkfifo(root / "recipes" / "data" / "fifo.jsonl")
    (root / "recipes" / "dir.yaml").mkdir()
    return root


@pytest.fixture(scope="module")
def board(ws):
    url, stop = S.start_board(ws)
    r = requests.post(f"{url}/api/compile", json={"path": "recipes/tiny.yaml"}, headers=H, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    yield url
    stop()


def err(r, status, code, ws=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code, r.text
    assert "Traceback" not in r.text and (ws is None or str(ws) not in r.text), r.text
    return r.json()["error"]


# ---- request tricks ----

def test_a_chunked_body_is_capped_on_the_bytes_read(board):
    def chunks():
        for _ in range(50):
            yield b" " * (100 << 10)  # 5 MB, no Content-Length (chunked)
    r = requests.post(f"{board}/api/validate", data=chunks(), headers={**H, "Content-Type": "application/json"},
                      timeout=TIMEOUT)
    err(r, 413, "too_large")
    small = requests.post(f"{board}/api/yaml", data=iter([b'{"data": ', b'{"a": 1}}']), timeout=TIMEOUT,
                          headers={**H, "Content-Type": "application/json"})
    assert small.status_code == 200 and small.json()["text"] == "a: 1\n", small.text  # chunked, within the cap


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"data":' + '{"a":' * 5000 + "1" + "}" * 5001,
                                  "not json", '"a string"', "[1, 2]", "\xff\xfe"])
def test_nested_odd_and_non_json_bodies_are_400(board, ws, body):
    r = requests.post(f"{board}/api/yaml", data=body.encode("utf-8", "surrogateescape"), timeout=TIMEOUT,
                      headers={**H, "Content-Type": "application/json"})
    err(r, 400, "bad_request", ws)


def test_wrong_content_types_are_refused(board, ws):
    text = json.dumps({"path": "recipes/tiny.yaml", "text": "name: x\n"})
    err(requests.post(f"{board}/api/validate", data=text, headers={**H, "Content-Type": "text/plain"},
                      timeout=TIMEOUT), 400, "bad_request", ws)
    err(requests.post(f"{board}/api/validate", data={"path": "recipes/tiny.yaml"}, headers=H, timeout=TIMEOUT), 400,
        "bad_request", ws)


def test_huge_numbers_in_queries_are_bounded(board, ws):
    for n in (10**30, -1, 0, 101):
        err(requests.get(f"{board}/api/dataset/preview", params={"path": "recipes/data/small_sft.jsonl", "n": n},
                         timeout=TIMEOUT), 400, "bad_request", ws)


# ---- path tricks ----

ODD_PATHS = {"long": "a" * 5000 + ".yaml", "long_name": "recipes/" + "a" * 300 + ".yaml", "newline": "recipes/a\n.yaml",
             "encoded_dotdot": "recipes/%2e%2e/%2e%2e/x.yaml"}


@pytest.mark.parametrize("how", sorted(ODD_PATHS))
def test_odd_paths_are_refused_without_echoing_absolute_paths(board, ws, how):
    value = ODD_PATHS[how]
    if how == "encoded_dotdot":  # sent raw: the server decodes it to '..'
        r = requests.get(f"{board}/api/recipe?path={value}", timeout=TIMEOUT)
    else:
        r = requests.get(f"{board}/api/recipe", params={"path": value}, timeout=TIMEOUT)
    assert err(r, 400, "path", ws)["field"] == "path"
    assert err(requests.put(f"{board}/api/recipe", json={"path": value.replace("%2e", "."), "text": "name: x\n"},
                            headers=H, timeout=TIMEOUT), 400, "path", ws)["field"] == "path"


def test_look_alike_dots_stay_names_inside_the_workspace(board, ws):
    name = "recipes/\uff0e\uff0e/tiny.yaml"  # fullwidth full stops: a folder name, not '..'
    err(requests.get(f"{board}/api/recipe", params={"path": name}, timeout=TIMEOUT), 404, "not_found", ws)
    assert requests.put(f"{board}/api/recipe", json={"path": name, "text": "name: x\n"}, headers=H,
                        timeout=TIMEOUT).status_code == 200
    assert (ws / "recipes" / "\uff0e\uff0e" / "tiny.yaml").read_text() == "name: x\n"


def test_fifos_and_folders_are_not_read_or_replaced(board, ws):
    for path in ("recipes/fifo.yaml", "recipes/dir.yaml"):
        err(requests.get(f"{board}/api/recipe", params={"path": path}, timeout=10), 404, "not_found", ws)
        err(requests.put(f"{board}/api/recipe", json={"path": path, "text": "name: x\n"}, headers=H, timeout=10), 409,
            "conflict", ws)
    err(requests.get(f"{board}/api/dataset/preview", params={"path": "recipes/data/fifo.jsonl"}, timeout=10), 404,
        "not_found", ws)
    assert (ws / "recipes" / "dir.yaml").is_dir() and not (ws / "recipes" / "fifo.yaml").is_file()
    err(requests.get(f"{board}/static/%2e%2e/%2e%2e/security.py", timeout=10), 400, "path")


def test_recipes_are_not_written_into_board_state_or_bundles(board, ws):
    for path in (".tkc-board/evil.yaml", "runs/tiny/recipe/tiny.yaml", "runs/tiny/outputs/x.yaml"):
        err(requests.put(f"{board}/api/recipe", json={"path": path, "text": "name: x\n"}, headers=H,
                         timeout=TIMEOUT), 400, "bad_request", ws)


def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_written_through(ws, tmp_path):
    from tkc.board.security import BoardError, workspace_path
    from tkc.board.workspace import write_atomic

    (ws / "swap").mkdir()
    target = workspace_path(ws, "swap/r.yaml", "path")  # checked: inside the workspace
    (ws / "swap").rmdir()
    (ws / "swap").symlink_to(tmp_path, target_is_directory=True)  # then swapped (TOCTOU)
    with pytest.raises(BoardError) as caught:
        write_atomic(target, b"name: x\n", ws)
    assert caught.value.status == 409 and list(tmp_path.iterdir()) == []
    (ws / "swap").unlink()
    (ws / "swap").mkdir()
    (ws / "swap" / "r.yaml").symlink_to(tmp_path / "victim.yaml")  # the file itself swapped for a link
    write_atomic(target, b"name: y\n", ws)
    assert not (ws / "swap" / "r.yaml").is_symlink() and not (tmp_path / "victim.yaml").exists()


# ---- CSRF, DNS rebinding, token ----

def test_cross_site_tricks_are_403(board, ws):
    url = f"{board}/api/validate"
    body = {"path": "recipes/tiny.yaml", "text": "name: x\n"}
    for headers in ({**H, "Origin": "null"}, {**H, "Referer": "http://evil.example/page"},
                    {**H, "Referer": f"{board}.evil.example/"}, {"X-TKC-Board": "true"}, {"X-TKC-Board": "0"},
                    {"X-TKC-Board": "1, 1"}, {"Content-Type": "text/plain"}):
        err(requests.post(url, json=body, headers=headers, timeout=TIMEOUT), 403, "csrf")
    form = requests.post(url, data="path=recipes/tiny.yaml", timeout=TIMEOUT,
                         headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"})
    err(form, 403, "csrf")
    assert requests.post(url, json=body, headers={**H, "Referer": f"{board}/"}, timeout=TIMEOUT).status_code == 200


def test_rebinding_host_variants(board):
    port = board.rsplit(":", 1)[1]
    for host in (f"127.0.0.1.:{port}", f"localhost.:{port}", f"127.0.0.1:0{port}", f"127.1:{port}",
                 f"[::ffff:127.0.0.1]:{port}", "127.0.0.1", f"127.0.0.1:{port}@evil.example", ""):
        err(requests.get(f"{board}/api/info", headers={"Host": host}, timeout=TIMEOUT), 421, "host")
    for host in (f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert requests.get(f"{board}/api/info", headers={"Host": host}, timeout=TIMEOUT).status_code == 200


def test_the_token_is_never_taken_from_the_query_string(ws):
    url, stop = S.start_board(ws, token=TOKEN)
    try:
        for params in ({"token": TOKEN}, {"access_token": TOKEN}):
            err(requests.get(f"{url}/api/runs", params=params, timeout=TIMEOUT), 401, "auth")
        for auth in (f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", TOKEN):
            err(requests.get(f"{url}/api/runs", headers={"Authorization": auth}, timeout=TIMEOUT), 401, "auth")
        ok = requests.get(f"{url}/api/runs", headers={"Authorization": f"bearer {TOKEN}"}, timeout=TIMEOUT)
        assert ok.status_code == 200
        login = requests.post(f"{url}/api/login", json={"token": TOKEN}, headers=H, timeout=TIMEOUT)
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    finally:
        stop()


# ---- runs, logs, chat, export ----

def _wait_ended(url: str, run_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = requests.get(f"{url}/api/runs/{run_id}", timeout=TIMEOUT).json()
        if run["status"] != "running":
            return run
        time.sleep(0.1)
    raise AssertionError("the run did not end")


def test_one_live_run_per_bundle_even_across_boards(board, ws):
    answers: list[requests.Response] = []

    def start() -> None:
        answers.append(requests.post(f"{board}/api/runs", json={"bundle": "runs/tiny"}, headers=H, timeout=TIMEOUT))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r.json()["id"] for r in answers if r.status_code == 200]
    assert len(started) == 1 and sorted(r.status_code for r in answers) == [200, 409, 409], [r.text for r in answers]
    run_id = started[0]
    other, stop_other = S.start_board(ws)  # a second board over the same workspace
    try:
        err(requests.post(f"{other}/api/runs", json={"bundle": "runs/tiny"}, headers=H, timeout=TIMEOUT), 409,
            "conflict")
        err(requests.post(f"{other}/api/runs/{run_id}/resume", headers=H, timeout=TIMEOUT), 409, "conflict")
    finally:
        stop_other()
    err(requests.post(f"{board}/api/runs/{run_id}/resume", headers=H, timeout=TIMEOUT), 409, "conflict")
    # one lock for both: the run the board started holds `tkc run`'s own (handed down, then claimed with its
    # pid), so a `tkc run` of the bundle from a shell is refused too (exit 3: tests/runtime/test_resume.py)
    pid = json.loads((ws / ".tkc-board" / "runs" / run_id / "run.json").read_text())["pid"]
    lock = ws / "runs" / "tiny" / "outputs" / ".tkc-run.lock"
    deadline = time.monotonic() + 120
    while lock.read_text() != str(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    fd, why = run_lock.acquire(ws / "runs" / "tiny")  # what a `tkc run` from a shell asks first
    if fd is not None:
        os.close(fd)
    assert fd is None and f"is running (pid {pid})" in why, why
    assert requests.post(f"{board}/api/runs/{run_id}/stop", headers=H, timeout=TIMEOUT).json() == {"ok": True}
    assert _wait_ended(board, run_id)["status"] in ("stopped", "failed")
    err(requests.post(f"{board}/api/runs/{run_id}/stop", headers=H, timeout=TIMEOUT), 409, "conflict")
    err(requests.post(f"{board}/api/runs/20260101-000000-abcdef/resume", headers=H, timeout=TIMEOUT), 404, "not_found")


def test_a_board_state_folder_linked_out_is_never_written(tmp_path):
    root = S.make_workspace(tmp_path / "w")
    (tmp_path / "elsewhere").mkdir()
    (root / ".tkc-board").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    url, stop = S.start_board(root)
    try:
        assert requests.post(f"{url}/api/compile", json={"path": "recipes/tiny.yaml"}, headers=H,
                             timeout=TIMEOUT).status_code == 200
        err(requests.post(f"{url}/api/runs", json={"bundle": "runs/tiny"}, headers=H, timeout=TIMEOUT), 409,
            "conflict", root)
        assert requests.get(f"{url}/api/runs", timeout=TIMEOUT).json() == {"runs": []}
    finally:
        stop()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_huge_log_is_read_in_bounded_chunks(board, ws):
    run_id = "20260101-000000-feedee"
    folder = ws / ".tkc-board" / "runs" / run_id
    folder.mkdir(parents=True)
    with open(folder / "log.txt", "wb") as f:
        f.truncate(64 << 20)  # 64 MiB (sparse), then the line the progress reads
        f.seek(0, os.SEEK_END)
        f.write(b"[sft] step 3/40 loss 1.0\n")
    (folder / "run.json").write_text(json.dumps({
        "id": run_id, "bundle": "runs/tiny", "bundle_abs": str((ws / "runs" / "tiny").resolve()), "hash": "h",
        "argv": [], "pid": 0, "started": "t", "ended": "t", "returncode": 0, "stop_requested": False}))
    try:
        first = requests.get(f"{board}/api/runs/{run_id}/log", timeout=TIMEOUT).json()
        assert len(first["text"].encode()) <= 256 << 10 and first["offset"] == 256 << 10
        end = requests.get(f"{board}/api/runs/{run_id}/log", params={"offset": 10**30}, timeout=TIMEOUT).json()
        assert end == {"text": "", "offset": (64 << 20) + 25}
        assert requests.get(f"{board}/api/runs/{run_id}/log", params={"offset": -5}, timeout=TIMEOUT).json()[
            "offset"] == 256 << 10
        assert requests.get(f"{board}/api/runs/{run_id}", timeout=TIMEOUT).json()["progress"]["total_steps"] == 40
    finally:
        shutil.rmtree(folder)


def test_an_over_long_chat_is_refused_before_any_model_loads(board, ws):
    many = [{"role": "user", "content": "hi"}] * 201
    long = [{"role": "user", "content": "x" * 100_001}]
    for messages in (many, long):
        e = err(requests.post(f"{board}/api/chat", json={"bundle": "runs/tiny", "messages": messages}, headers=H,
                              timeout=TIMEOUT), 400, "bad_request", ws)
        assert e["field"] == "messages"


def test_export_never_replaces_or_clears_user_folders(board, ws):
    (ws / "mine").mkdir()
    (ws / "mine" / "keep.txt").write_text("user data\n")
    (ws / ".tmp-model").mkdir()
    (ws / ".tmp-model" / "keep.txt").write_text("user data\n")
    for out, status, code in (("mine", 409, "conflict"), ("model", 409, "conflict"), ("runs/tiny/outputs/m", 400,
                              "bad_request"), (".tkc-board/m", 400, "bad_request"), ("runs/tiny", 409, "conflict")):
        e = err(requests.post(f"{board}/api/export", json={"bundle": "runs/tiny", "out": out}, headers=H,
                              timeout=TIMEOUT), status, code, ws)
        assert e["field"] == "out"
    assert (ws / "mine" / "keep.txt").read_text() == (ws / ".tmp-model" / "keep.txt").read_text() == "user data\n"
    assert not (ws / "model").exists()


def test_bundles_are_compiled_only_to_folders_of_their_own(board, ws):
    for out in ("runs/tiny/outputs/x", ".tkc-board/x", "runs/tiny/launch/x"):
        e = err(requests.post(f"{board}/api/compile", json={"path": "recipes/tiny.yaml", "out": out}, headers=H,
                              timeout=TIMEOUT), 400, "bad_request", ws)
        assert e["field"] == "out" and not (ws / out).exists()
    for out in (".", "recipes", "recipes/data"):  # user folders: never replaced, force or not
        err(requests.post(f"{board}/api/compile", json={"path": "recipes/tiny.yaml", "out": out, "force": True},
                          headers=H, timeout=TIMEOUT), 409, "conflict", ws)
    assert (ws / "recipes" / "data" / "small_sft.jsonl").is_file()


def test_links_and_planted_records_are_not_read_through(board, ws, tmp_path):
    secret = tmp_path / "secret.sh"
    secret.write_text("the secret\n")
    link = ws / "runs" / "tiny" / "launch" / "zz.sh"
    link.symlink_to(secret)
    try:
        view = requests.get(f"{board}/api/bundle", params={"path": "runs/tiny"}, timeout=TIMEOUT)
        assert view.status_code == 200 and "the secret" not in view.text and str(tmp_path) not in view.text
    finally:
        link.unlink()
    run_id = "20260101-000000-0badba"
    folder = ws / ".tkc-board" / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text("")
    (folder / "run.json").write_text(json.dumps({
        "id": run_id, "bundle": "x", "bundle_abs": str(tmp_path), "hash": "h", "argv": [], "pid": os.getpid(),
        "started": "t", "ended": None, "returncode": None, "stop_requested": False}))
    try:
        assert run_id not in requests.get(f"{board}/api/runs", timeout=TIMEOUT).text
        for method, route in (("GET", ""), ("GET", "/steps"), ("POST", "/stop"), ("POST", "/resume")):
            err(requests.request(method, f"{board}/api/runs/{run_id}{route}", headers=H, timeout=TIMEOUT), 404,
                "not_found")
    finally:
        shutil.rmtree(folder)
