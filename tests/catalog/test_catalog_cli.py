"""`tkc catalog render --mode raw|inference|training`, `tkc catalog families` and `tkc catalog templates`, run as a
user runs them (a subprocess of the real CLI)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VENDOR = Path(__file__).parent / "vendor"
CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
}


def tkc(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400"}  # rich tables wrap cells at 80 columns
    return subprocess.run([sys.executable, "-m", "tkc.cli.main", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def _vendor(template_id: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """The vendor's own chat_template rendered by transformers (what apply_chat_template prints)."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    spec = json.loads((VENDOR / f"{template_id}.json").read_text(encoding="utf-8"))
    out, _ = utils.render_jinja_template(conversations=[messages], chat_template=spec["chat_template"],
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=spec["bos_token"], eos_token=spec["eos_token"])  # fmt: skip
    return out[0]


@pytest.fixture
def conv(tmp_path: Path) -> Path:
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(CONVERSATION), encoding="utf-8")
    return path


def test_inference_is_the_vendor_generation_prompt_without_the_answer(conv):
    out = tkc("catalog", "render", "qwen2_5", str(conv), "--mode", "inference")
    assert out.returncode == 0, out.stderr
    assert out.stdout == _vendor("qwen2_5", CONVERSATION["messages"][:-1], add_generation_prompt=True)
    assert out.stdout.endswith("<|im_start|>assistant\n") and "Blue." not in out.stdout
    assert "final assistant turn is the answer" in out.stderr


def test_training_is_the_full_text_with_the_end_of_turn_token(conv):
    out = tkc("catalog", "render", "llama3", str(conv), "--mode", "training")
    assert out.returncode == 0, out.stderr
    assert out.stdout == _vendor("llama3", CONVERSATION["messages"], add_generation_prompt=False)
    assert out.stdout.endswith("Blue.<|eot_id|>")


def test_show_spans_marks_each_assistant_turn_with_its_end_token(conv):
    out = tkc("catalog", "render", "qwen2_5", str(conv), "--mode", "training", "--show-spans")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("⟦") == out.stdout.count("⟧") == 2
    assert "⟦Hello!<|im_end|>⟧" in out.stdout and "⟦Blue.<|im_end|>⟧" in out.stdout
    plain = tkc("catalog", "render", "qwen2_5", str(conv), "--mode", "training").stdout
    assert out.stdout.replace("⟦", "").replace("⟧", "") == plain


def test_raw_mode_is_todays_output_and_says_so(conv):
    out = tkc("catalog", "render", "qwen2_5", str(conv))
    assert out.returncode == 0, out.stderr
    assert out.stdout == _vendor("qwen2_5", CONVERSATION["messages"], add_generation_prompt=True)
    assert "mode raw" in out.stderr and "add_generation_prompt=true" in out.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "chat"], "expected one of raw, inference, training"),
    (["--show-spans"], "needs --mode training"),
])  # fmt: skip
def test_bad_mode_exits_2(conv, args, message):
    out = tkc("catalog", "render", "qwen2_5", str(conv), *args)
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""


def test_training_without_an_assistant_turn_exits_2(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}), encoding="utf-8")
    out = tkc("catalog", "render", "qwen2_5", str(path), "--mode", "training")
    assert out.returncode == 2 and "no assistant turn to train on" in out.stderr and out.stdout == ""


def test_families_show_how_each_was_verified():
    out = tkc("catalog", "families")
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 3}
    assert "Qwen3MoeForCausalLM" in rows["qwen3_moe"]
    assert "remote code" in rows["internlm2"]


def test_templates_show_the_pinned_source_or_written_by_tkc():
    out = tkc("catalog", "templates")
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 3}
    assert "huggingface/trl@f2cd577" in rows["qwen3"] and "Qwen/Qwen3-8B" in rows["qwen3"]
    assert "written by tkc" in rows["alpaca"]
