"""`tkc run` on records the compile-time probe lets through but the runtime refuses: exit 2, file:line, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TKC = REPO / ".venv" / "bin" / "tkc"
OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}

RECIPE = """schema_version: 1
name: bad-records
model: {path: assets/tiny-qwen2, init: scratch}
template: auto
data:
  datasets:
    d: {path: data/d.jsonl, format: openai}
  cutoff_len: 64
stages:
  - {kind: sft, name: sft, datasets: [d], finetuning: {method: full}, train: {max_steps: 1, global_batch_size: 2}}
hardware: cpu
"""

# Each passes the probe (the keys it checks are there) and fails the runtime's converter or renderer.
CASES = {
    "turns out of order": ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                         {"role": "assistant", "content": "c"}]}, "turn 1 is 'user'"),
    "empty conversation end": ({"messages": [{"role": "user", "content": "a"}]}, "the last turn is 'user'"),
    "bad tool call json": ({"messages": [{"role": "user", "content": "a"},
                                         {"role": "function_call", "content": "{not json"}]},
                           "function call is not valid JSON"),
}  # fmt: skip


def _project(tmp_path: Path, bad: dict, at: int) -> Path:
    shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", tmp_path / "assets" / "tiny-qwen2")
    (tmp_path / "data").mkdir()
    records = [OK] * 30
    records[at - 1] = bad
    (tmp_path / "data" / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path / "recipe.yaml"


def _tkc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TKC), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_run_exits_2_naming_the_record(tmp_path, case):
    bad, reason = CASES[case]
    recipe = _project(tmp_path, bad, at=25 if case == "turns out of order" else 3)  # line 25: past the probe's 20
    compiled = _tkc("compile", str(recipe), "-o", str(tmp_path / "run"))
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = _tkc("run", str(tmp_path / "run"))
    out = ran.stdout + ran.stderr
    line = 25 if case == "turns out of order" else 3
    assert ran.returncode == 2, out
    assert f"data/d.jsonl:{line}: " in out and reason in out
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "outputs" / "sft" / "DONE").exists()
