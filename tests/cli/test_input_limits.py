"""Hostile and broken inputs through the real CLI, in a process capped at 2 GiB of address space: exit 2 with a
positioned message, nothing written, never a traceback."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT = 2 << 30
BOMB = "\n".join(['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
                 + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"   # 9**9 values


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def tkc_capped(*args: object) -> subprocess.CompletedProcess:
    """`tkc ...` in a subprocess under RLIMIT_AS = 2 GiB; the timeout only guards against a hang."""
    return subprocess.run([sys.executable, "-m", "tkc.cli.main", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=_cap_memory, timeout=120, cwd=REPO)


def _assert_refused(proc: subprocess.CompletedProcess, where: str, code: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert where in proc.stderr and code in proc.stderr, proc.stderr[-2000:]


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "recipes", tmp_path / "r")
    return tmp_path / "r"


def test_alias_bomb_recipe_is_refused_in_bounded_memory(recipes, tmp_path):
    assert len(BOMB) < 500
    (recipes / "bomb.yaml").write_text(BOMB)
    proc = tkc_capped("compile", recipes / "bomb.yaml", "-o", tmp_path / "out")
    _assert_refused(proc, "bomb.yaml:1:", "YAML009")
    assert not (tmp_path / "out").exists()


def test_alias_bomb_in_an_extends_base_is_refused(recipes, tmp_path):
    (recipes / "bomb.yaml").write_text(BOMB)
    demo = recipes / "demo.yaml"
    demo.write_text("extends: [bomb.yaml]\n" + demo.read_text())
    proc = tkc_capped("compile", demo, "-o", tmp_path / "out")
    _assert_refused(proc, "bomb.yaml:1:", "YAML009")
    assert not (tmp_path / "out").exists()


def test_string_bomb_and_deep_nesting_are_refused(recipes, tmp_path):
    (recipes / "s.yaml").write_text(f'a: &a "{"x" * 100_000}"\n'
                                    + "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}' if i else '*a'] * 8)}]\n"
                                              for i in range(8)))
    _assert_refused(tkc_capped("compile", recipes / "s.yaml", "-o", tmp_path / "out"), "s.yaml:", "YAML009")
    (recipes / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    _assert_refused(tkc_capped("compile", recipes / "deep.yaml", "-o", tmp_path / "out"), "deep.yaml:1:", "YAML008")
    assert not (tmp_path / "out").exists()


def test_50_mb_recipe_is_refused_and_not_copied(recipes, tmp_path):
    demo = recipes / "demo.yaml"
    with demo.open("a") as fh:
        for _ in range(50):
            fh.write("#" * (1 << 20) + "\n")
    proc = tkc_capped("compile", demo, "-o", tmp_path / "out")
    _assert_refused(proc, "demo.yaml:1:1:", "YAML005")
    assert not (tmp_path / "out").exists()


def test_non_finite_float_and_invalid_utf8_exit_2(recipes, tmp_path):
    demo = recipes / "demo.yaml"
    text = demo.read_text()
    demo.write_text(text.replace("save_steps: 500", "save_steps: 500\n  max_grad_norm: .inf"))
    proc = tkc_capped("compile", demo, "-o", tmp_path / "out")
    _assert_refused(proc, "demo.yaml:47:3:", "SCHEMA002 train.max_grad_norm: Input should be a finite number")
    demo.write_bytes(text.encode().replace(b"name: demo", b"name: demo  # \xff"))
    _assert_refused(tkc_capped("compile", demo, "-o", tmp_path / "out"), "demo.yaml:7:15:", "YAML006")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,message", [
    ([{"role": "user", "content": "hi"}], 'top level: expected an object with "messages", got a JSON list'),
    ('{"messages": [', "c.json:1:15: invalid JSON"),
    ({"messages": [1]}, 'messages[0]: expected an object with a string "role"'),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content: expected a string or a list of parts"),
    ({"messages": "hi"}, "messages: expected a list of messages, got string"),
    ({"messages": [], "tools": {"a": 1}}, "tools: expected a list of tool objects"),
    ({"mesages": []}, "mesages: unknown key"),
    (b"\xff", "not UTF-8"),
])
def test_catalog_render_bad_conversation_exits_2(tmp_path, content, message):
    conv = tmp_path / "c.json"
    if isinstance(content, bytes):
        conv.write_bytes(content)
    else:
        conv.write_text(content if isinstance(content, str) else json.dumps(content))
    proc = tkc_capped("catalog", "render", "chatml", conv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr and str(conv) in proc.stderr
    assert proc.stdout == ""


def test_catalog_render_missing_file_exits_2(tmp_path):
    proc = tkc_capped("catalog", "render", "chatml", tmp_path / "nope.json")
    assert proc.returncode == 2 and "nope.json: cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_data_inspect_of_a_bad_recipe_a_missing_path_or_a_non_bundle_folder_is_exit_2_not_a_traceback(tkc, tmp_path):
    (tmp_path / "bad.yaml").write_text("schema_version: 1\nname: x\n")
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "resolved.json").write_text("{not json")
    for target, expect in [("bad.yaml", "bad.yaml:1:1: SCHEMA003"), ("missing", "RECIPE001"),
                           ("notabundle", "not a bundle"), ("broken", "not a bundle")]:
        code, _, err = tkc("data", "inspect", tmp_path / target)
        assert code == 2 and expect in err, (target, code, err)


def test_data_inspect_verifies_the_bundle_before_reading_it(tkc, tmp_path):
    """A bundle whose resolved.json was edited after compile is refused, named, before anything reads it."""
    out = tmp_path / "b"
    code, _, err = tkc("compile", REPO / "recipes" / "demo.yaml", "-o", out)
    assert code == 0, err
    resolved = out / "resolved.json"
    resolved.write_text(resolved.read_text().replace('"cutoff_len": 64', '"cutoff_len": 32'))
    code, _, err = tkc("data", "inspect", out)
    assert code == 2 and "failed verification" in err and "resolved.json: changed since compile" in err, err
