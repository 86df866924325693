"""The board's JSON API at the HTTP level against a real uvicorn server: every route, and every refusal (paths
outside the workspace, missing/wrong token, cross-site requests, a foreign Host, shell metacharacters as data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import board_server as S  # tests/board/board_server.py (pytest puts this folder on sys.path)
import pytest
import requests

H = S.HEADERS
TOKEN = S.TOKEN
TIMEOUT = 60


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = S.make_workspace(tmp_path_factory.mktemp("ws"))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.yaml").write_text("name: secret\n")
    (outside / "secret.jsonl").write_text('{"a": 1}\n')
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def board(ws):
    url, stop = S.start_board(ws)
    yield url
    stop()


@pytest.fixture(scope="module")
def locked(ws):
    url, stop = S.start_board(ws, token=TOKEN)
    yield url
    stop()


@pytest.fixture(scope="module")
def bundle(board):
    r = requests.post(f"{board}/api/compile", json={"path": "recipes/tiny.yaml"}, headers=H, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def get(url, **kw):
    return requests.get(url, timeout=TIMEOUT, **kw)


def send(method, url, body=None, headers=H, **kw):
    return requests.request(method, url, json=body, headers=headers, timeout=TIMEOUT, **kw)


def err(r, status, code):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code, r.text
    assert "Traceback" not in r.text
    return r.json()["error"]


# ---- the routes ----

def test_info_schema_catalog(board):
    info = get(f"{board}/api/info").json()
    assert info["token_required"] is False and "/" not in info["workspace"] and info["version"]
    assert get(f"{board}/api/schema").json()["title"] == "tkc recipe"
    cat = get(f"{board}/api/catalog").json()
    assert {"qwen2"} <= {f["id"] for f in cat["families"]}
    assert all({"id", "description", "supports_tools"} <= set(t) for t in cat["templates"])
    assert "cpu" in {p["id"] for p in cat["profiles"]}


def test_files_by_kind(board, bundle):
    recipes = get(f"{board}/api/files", params={"kind": "recipes"}).json()["files"]
    assert "recipes/tiny.yaml" in recipes and not any(f.startswith(("runs/", "escape/")) for f in recipes)
    assert "recipes/data/small_sft.jsonl" in get(f"{board}/api/files", params={"kind": "datasets"}).json()["files"]
    assert get(f"{board}/api/files", params={"kind": "bundles"}).json()["files"] == ["runs/tiny"]
    err(get(f"{board}/api/files", params={"kind": "secrets"}), 400, "bad_request")


def test_recipe_read_write_and_refusal_to_overwrite_other_files(board, ws):
    text = "# edited\nname: edited\n"
    assert send("PUT", f"{board}/api/recipe", {"path": "recipes/new/edited.yaml", "text": text}).json()["ok"]
    assert get(f"{board}/api/recipe", params={"path": "recipes/new/edited.yaml"}).json()["text"] == text
    assert not [p for p in (ws / "recipes" / "new").iterdir() if p.name.startswith(".")]  # no temp left
    (ws / "notes.yaml").write_text("- a list, not a recipe\n")
    err(send("PUT", f"{board}/api/recipe", {"path": "notes.yaml", "text": "name: x\n"}), 409, "conflict")
    assert (ws / "notes.yaml").read_text() == "- a list, not a recipe\n"
    err(send("PUT", f"{board}/api/recipe", {"path": "recipes/x.txt", "text": "a"}), 400, "bad_request")
    err(send("PUT", f"{board}/api/recipe", {"path": "runs/tiny/recipe/tiny.yaml", "text": "a"}), 400, "bad_request")
    err(get(f"{board}/api/recipe", params={"path": "recipes/none.yaml"}), 404, "not_found")


def test_validate_gives_the_cli_positioned_diagnostics_then_ok(board, ws):
    text = (ws / "recipes" / "tiny.yaml").read_text()
    typo = text.replace("max_steps:", "max_stepz:")
    out = send("POST", f"{board}/api/validate", {"path": "recipes/tiny.yaml", "text": typo}).json()
    assert not out["ok"]
    d = next(d for d in out["diagnostics"] if d["code"] == "SCHEMA001")
    assert d["file"] == "recipes/tiny.yaml" and d["key"] == "train.max_stepz" and d["hint"] == "did you mean 'max_steps'?"
    assert typo.splitlines()[d["line"] - 1].find("max_stepz") == d["column"] - 1
    assert out["data"]["train"]["max_stepz"] == 6
    fixed = send("POST", f"{board}/api/validate", {"path": "recipes/tiny.yaml", "text": text}).json()
    assert fixed["ok"] and fixed["diagnostics"] == [] and fixed["data"]["name"] == "tiny"
    assert not [p for p in (ws / "recipes").iterdir() if "tkc-board" in p.name]  # the temp copy is gone
    bad = send("POST", f"{board}/api/validate", {"path": "recipes/tiny.yaml", "text": "a: [\n"}).json()
    assert bad["data"] is None and bad["diagnostics"][0]["code"].startswith("YAML")


def test_yaml_from_form_data(board):
    data = {"name": "x", "train": {"learning_rate": 0.001, "epochs": 2}}
    text = send("POST", f"{board}/api/yaml", {"data": data}).json()["text"]
    import yaml

    assert yaml.safe_load(text) == data and text.index("name") < text.index("train")
    err(send("POST", f"{board}/api/yaml", {"data": [1]}), 400, "bad_request")


def test_dataset_preview(board):
    out = get(f"{board}/api/dataset/preview", params={"path": "recipes/data/small_sft.jsonl", "n": 3}).json()
    assert out["format"] == "jsonl" and out["total"] == 64 and len(out["rows"]) == 3 and "instruction" in out["rows"][0]
    err(get(f"{board}/api/dataset/preview", params={"path": "recipes/tiny.yaml"}), 404, "not_found")
    err(get(f"{board}/api/dataset/preview", params={"path": "recipes/data/small_sft.jsonl", "n": 0}), 400,
        "bad_request")


def test_compile_bundle_view_and_diff(board, ws, bundle):
    assert bundle["bundle"] == "runs/tiny" and len(bundle["hash"]) == 64
    view = get(f"{board}/api/bundle", params={"path": "runs/tiny"}).json()
    assert view["hash"] == bundle["hash"] and view["verified"] and view["stages"][0]["name"] == "sft"
    lr = next(v for v in view["sections"]["stages"] if v["key"] == "stages.0.train.learning_rate")
    assert lr["source"] == "recipe:tiny_cpu.yaml" and lr["value"] == 1.0e-3  # set by the base recipe
    assert any(k.startswith("launch/") for k in view["scripts"]) and view["estimate"]["sft"]["params"] > 0
    # the same recipe again: same hash, kept; an edited one elsewhere, then diffed
    again = send("POST", f"{board}/api/compile", {"path": "recipes/tiny.yaml"}).json()
    assert again["hash"] == bundle["hash"]
    text = (ws / "recipes" / "tiny.yaml").read_text().replace("max_steps: 6", "max_steps: 7")
    other = send("POST", f"{board}/api/compile", {"path": "recipes/tiny2.yaml", "text": text, "out": "runs/b"})
    assert other.status_code == 200, other.text
    d = get(f"{board}/api/diff", params={"a": "runs/tiny", "b": "runs/b"}).json()
    assert not d["same"] and "max_steps" in d["text"]
    change = next(c for c in d["changes"] if c["key"] == "stages.0.train.max_steps")
    assert (change["a"], change["b"]) == (6, 7) and change["source_a"].startswith("recipe")


def test_compile_refuses_to_replace_bundles(board, ws, bundle):
    text = (ws / "recipes" / "tiny.yaml").read_text().replace("max_steps: 6", "max_steps: 8")
    body = {"path": "recipes/tiny3.yaml", "text": text, "out": "runs/tiny"}
    e = err(send("POST", f"{board}/api/compile", body), 409, "conflict")
    assert e["field"] == "out" and '"force": true' in e["message"]
    (ws / "runs" / "c").mkdir(parents=True)
    send("POST", f"{board}/api/compile", {**body, "out": "runs/c"})
    forced = {**body, "text": text.replace("max_steps: 8", "max_steps: 10"), "out": "runs/c", "force": True}
    first = send("POST", f"{board}/api/compile", forced).json()  # no outputs yet: replaced, as --force does
    assert json.loads((ws / "runs" / "c" / "manifest.json").read_text())["bundle_hash"] == first["hash"]
    (ws / "runs" / "c" / "outputs").mkdir()  # it has run
    changed = {**body, "text": text.replace("max_steps: 8", "max_steps: 9"), "out": "runs/c", "force": True}
    err(send("POST", f"{board}/api/compile", changed), 409, "conflict")
    assert json.loads((ws / "runs" / "c" / "manifest.json").read_text())["bundle_hash"] == first["hash"]
    bad = send("POST", f"{board}/api/compile", {"path": "recipes/bad.yaml", "text": "name: 1\nstagez: []\n"})
    assert any(d["code"] == "SCHEMA001" for d in err(bad, 400, "invalid")["diagnostics"])
    assert not (ws / "runs" / "bad").exists()


def test_run_routes_refuse_unknown_ids_and_unverified_bundles(board, ws, bundle):
    err(get(f"{board}/api/runs/nope"), 404, "not_found")
    err(send("POST", f"{board}/api/runs/20260101-000000-abcdef/stop"), 404, "not_found")
    assert get(f"{board}/api/runs").json() == {"runs": []}
    text = (ws / "recipes" / "tiny.yaml").read_text().replace("max_steps: 6", "max_steps: 5")
    send("POST", f"{board}/api/compile", {"path": "recipes/tiny4.yaml", "text": text, "out": "runs/tampered"})
    (ws / "runs" / "tampered" / "resolved.json").write_text("{}\n")
    e = err(send("POST", f"{board}/api/runs", {"bundle": "runs/tampered"}), 409, "unverified")
    assert e["problems"] and not (ws / ".tkc-board" / "runs").exists()
    err(send("POST", f"{board}/api/runs", {"bundle": "recipes"}), 404, "not_found")


def test_a_run_whose_process_vanished_unrecorded_is_lost(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    runs = tmp_path / "w" / ".tkc-board" / "runs"
    for run_id, code in (("20260101-000000-aaaaaa", None), ("20260101-000001-bbbbbb", 1)):
        (runs / run_id).mkdir(parents=True)
        (runs / run_id / "log.txt").write_text("")
        (runs / run_id / "run.json").write_text(json.dumps({
            "id": run_id, "bundle": "b", "bundle_abs": str(tmp_path / "w" / "b"), "hash": "h", "argv": [], "pid": pid,
            "started": "t", "ended": None, "returncode": code, "stop_requested": False}))
    url, stop = S.start_board(tmp_path / "w")
    try:
        listed = {r["id"]: r["status"] for r in get(f"{url}/api/runs").json()["runs"]}
        err(send("POST", f"{url}/api/runs/20260101-000000-aaaaaa/stop"), 409, "conflict")
    finally:
        stop()
    assert listed == {"20260101-000000-aaaaaa": "lost", "20260101-000001-bbbbbb": "failed"}


def test_unknown_routes_and_bad_bodies_are_json_errors(board):
    err(get(f"{board}/api/nothing"), 404, "not_found")
    r = requests.post(f"{board}/api/validate", data="not json", headers={**H, "Content-Type": "application/json"},
                      timeout=TIMEOUT)
    err(r, 400, "bad_request")
    err(send("POST", f"{board}/api/validate", {"path": "recipes/tiny.yaml", "text": 3}), 400, "bad_request")
    err(send("POST", f"{board}/api/chat", {"bundle": "runs/tiny", "messages": "hi"}), 400, "bad_request")
    big = {"path": "recipes/tiny.yaml", "text": "x" * (5 << 20)}
    err(send("POST", f"{board}/api/validate", big), 413, "too_large")


# ---- refusals on every route ----

PATH_FIELDS = [  # (method, route, body or query, field): each path-taking field of the API
    ("GET", "/api/recipe", {}, "path"),
    ("PUT", "/api/recipe", {"text": "name: x\n"}, "path"),
    ("POST", "/api/validate", {"text": "name: x\n"}, "path"),
    ("POST", "/api/compile", {}, "path"),
    ("POST", "/api/compile", {"path": "recipes/tiny.yaml"}, "out"),
    ("GET", "/api/dataset/preview", {}, "path"),
    ("POST", "/api/dataset/inspect", {"text": "name: x\n", "dataset": "small_sft"}, "recipe_path"),
    ("GET", "/api/bundle", {}, "path"),
    ("GET", "/api/diff", {"b": "runs/tiny"}, "a"),
    ("GET", "/api/diff", {"a": "runs/tiny"}, "b"),
    ("POST", "/api/runs", {}, "bundle"),
    ("POST", "/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, "bundle"),
    ("POST", "/api/export", {}, "bundle"),
    ("POST", "/api/export", {"bundle": "runs/tiny"}, "out"),
]
BAD_PATHS = {"absolute": "{outside}/secret.yaml", "dotdot": "recipes/../../secret.yaml", "symlink": "escape/secret.yaml",
             "nul": "recipes/tiny\x00.yaml", "backslash": "recipes\\tiny.yaml", "home": "~/secret.yaml"}


@pytest.mark.parametrize("how", sorted(BAD_PATHS))
@pytest.mark.parametrize(("method", "route", "rest", "field"), PATH_FIELDS,
                         ids=[f"{m}{r}:{f}" for m, r, _, f in PATH_FIELDS])
def test_paths_outside_the_workspace_are_400_naming_the_field(board, ws, bundle, method, route, rest, field, how):
    value = BAD_PATHS[how].format(outside=(ws / "escape").resolve())
    if how == "symlink" and field in ("path", "recipe_path") and route in ("/api/dataset/preview",):
        value = "escape/secret.jsonl"
    payload = {**rest, field: value}
    r = get(f"{board}{route}", params=payload) if method == "GET" else send(method, f"{board}{route}", payload)
    e = err(r, 400, "path")
    assert e["field"] == field
    assert (ws / "escape" / "secret.yaml").read_text() == "name: secret\n"


ROUTES = [("GET", "/api/schema"), ("GET", "/api/catalog"), ("GET", "/api/files?kind=recipes"),
          ("GET", "/api/recipe?path=recipes/tiny.yaml"), ("PUT", "/api/recipe"), ("POST", "/api/validate"),
          ("POST", "/api/yaml"), ("GET", "/api/dataset/preview?path=recipes/data/small_sft.jsonl"),
          ("POST", "/api/dataset/inspect"), ("POST", "/api/compile"), ("GET", "/api/bundle?path=runs/tiny"),
          ("GET", "/api/diff?a=runs/tiny&b=runs/tiny"), ("POST", "/api/runs"), ("GET", "/api/runs"),
          ("GET", "/api/runs/20260101-000000-abcdef"), ("POST", "/api/runs/20260101-000000-abcdef/stop"),
          ("POST", "/api/runs/20260101-000000-abcdef/resume"), ("GET", "/api/runs/20260101-000000-abcdef/log"),
          ("GET", "/api/runs/20260101-000000-abcdef/steps"), ("POST", "/api/chat"), ("POST", "/api/export")]
STATE_CHANGING = [(m, r) for m, r in ROUTES if m != "GET"] + [("POST", "/api/login")]


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m}{r}" for m, r in ROUTES])
def test_every_api_route_needs_the_token(locked, method, route):
    for headers in (H, {**H, "Authorization": "Bearer wrong-token-of-enough-chars"}, {**H, "Cookie": "tkc_board=x"}):
        err(requests.request(method, f"{locked}{route}", json={}, headers=headers, timeout=TIMEOUT), 401, "auth")
    r = requests.request(method, f"{locked}{route}", json={}, headers={**H, "Authorization": f"Bearer {TOKEN}"},
                         timeout=TIMEOUT)
    assert r.status_code != 401 and "Traceback" not in r.text


def test_login_sets_a_strict_httponly_cookie_and_the_page_loads(locked):
    assert get(f"{locked}/").status_code == 200
    assert get(f"{locked}/api/info").json()["token_required"] is True
    err(send("POST", f"{locked}/api/login", {"token": "wrong"}), 401, "auth")
    s = requests.Session()
    r = s.post(f"{locked}/api/login", json={"token": TOKEN}, headers=H, timeout=TIMEOUT)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert s.get(f"{locked}/api/runs", timeout=TIMEOUT).status_code == 200
    assert s.get(f"{locked}/api/info", timeout=TIMEOUT).json()["authenticated"] is True


@pytest.mark.parametrize(("method", "route"), STATE_CHANGING, ids=[f"{m}{r}" for m, r in STATE_CHANGING])
def test_state_changing_routes_need_the_header_and_a_same_origin(board, method, route):
    port = board.rsplit(":", 1)[1]
    e = err(send(method, f"{board}{route}", {}, headers={}), 403, "csrf")
    assert "X-TKC-Board" in e["message"]
    err(send(method, f"{board}{route}", {}, headers={**H, "Origin": "http://evil.example"}), 403, "csrf")
    err(send(method, f"{board}{route}", {}, headers={**H, "Origin": f"http://localhost:{int(port) + 1}"}), 403, "csrf")
    same = send(method, f"{board}{route}", {}, headers={**H, "Origin": board})
    assert same.status_code != 403


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost.evil:{port}"])
def test_a_foreign_host_header_is_refused(board, host):
    port = board.rsplit(":", 1)[1]
    for route in ("/", "/api/info", "/api/files?kind=recipes"):
        err(get(f"{board}{route}", headers={"Host": host.format(port=port)}), 421, "host")
    assert get(f"{board}/api/info", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_no_cors_and_protective_headers(board):
    r = requests.options(f"{board}/api/validate", timeout=TIMEOUT, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-tkc-board"})
    assert r.status_code >= 400 and not [h for h in r.headers if h.lower().startswith("access-control")]
    page = get(f"{board}/api/info")
    assert not [h for h in page.headers if h.lower().startswith("access-control")]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    err(get(f"{board}/static/../../security.py"), 404, "not_found")


PAYLOADS = ["$(touch {canary})", "; touch {canary}", "`touch {canary}`", "| touch {canary}", "\ntouch {canary}\n",
            "&& touch {canary} #"]


@pytest.mark.parametrize("n", range(len(PAYLOADS)))
def test_shell_metacharacters_in_every_field_are_data(board, ws, tmp_path, n):
    canary = tmp_path / "pwned"
    p = PAYLOADS[n].format(canary=canary)
    name = f"recipes/meta{n} {p.strip().replace(chr(10), ' ')}.yaml"
    text = (ws / "recipes" / "tiny.yaml").read_text().replace("name: tiny", f"name: {json.dumps(p)}")
    text += f"# {p!r}\n"
    assert send("PUT", f"{board}/api/recipe", {"path": name, "text": text}).status_code == 200
    assert get(f"{board}/api/recipe", params={"path": name}).json()["text"] == text
    v = send("POST", f"{board}/api/validate", {"path": name, "text": text}).json()
    assert v["data"]["name"] == p
    send("POST", f"{board}/api/compile", {"path": name, "text": text, "out": f"runs/meta{n} {p.strip()}"})
    send("POST", f"{board}/api/yaml", {"data": {"name": p}})
    for field in ("bundle", "stage"):
        send("POST", f"{board}/api/runs", {field: p})
        send("POST", f"{board}/api/export", {"bundle": "runs/tiny", field: p})
        send("POST", f"{board}/api/chat", {"bundle": "runs/tiny", field: p, "messages": [{"role": "user", "content": p}]})
    send("POST", f"{board}/api/dataset/inspect", {"recipe_path": name, "text": text, "dataset": p, "row": 0})
    for route in (f"/api/runs/{p}", f"/api/runs/{p}/log", f"/api/files?kind={p}"):
        assert get(f"{board}{route}").status_code in (400, 404)
    assert not canary.exists() and not list(ws.rglob("pwned"))


# ---- the CLI ----

def _board_cli(*args, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "tkc.cli.main", "board", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)


def test_cli_refuses_a_public_bind_without_a_good_token(tmp_path):
    out = _board_cli("--host", "0.0.0.0", "--port", str(S.free_port()), tmp_path=tmp_path)
    assert out.returncode == 2 and "--token-file" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "short").write_text("too-short\n")
    out = _board_cli("--host", "0.0.0.0", "--token-file", "short", tmp_path=tmp_path)
    assert out.returncode == 2 and "at least 16" in out.stderr
    out = _board_cli("--workspace", "missing", tmp_path=tmp_path)
    assert out.returncode == 2 and "not a folder" in out.stderr


def test_the_board_app_imports_no_heavy_library():
    code = ("import sys; from pathlib import Path; from tkc.board.app import create_app; import tkc.cli.board; "
            "create_app(Path('.'), token=None, host='127.0.0.1', port=1); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets', 'trl', "
            "'peft', 'accelerate', 'deepspeed', 'vllm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
