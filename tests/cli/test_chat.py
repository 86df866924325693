"""`tkc chat`: model output sanitised before it reaches the terminal, --show-prompt, oversized messages.

The sanitiser tests feed fixed hostile strings through a scripted engine (a real model cannot be made to emit
ESC[2J on demand); --show-prompt and the size limit run the real CLI on a real compiled bundle.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTILE = (
    "ok\x1b[2Jcleared\x07 bell\rOVERWRITE \x1b]0;evil title\x07t \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ "
    "\x9b31mred\x1b(B \x1bc\x00nul\x7f\x85 tab\there\nnext line \x1b[1;3"
)
CLEAN = "okcleared bellOVERWRITE t link red nul tab\there\nnext line "


class ScriptedEngine:
    """Answers every message with fixed deltas; renders a conversation as 'role: content' lines."""

    def __init__(self, deltas: list[str], context: int = 10_000):
        self.deltas, self.context = deltas, context

    def render(self, messages):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def count_tokens(self, messages):
        return len(self.render(messages).split())

    def max_context(self):
        return self.context

    def stream(self, messages, **kw):
        yield from self.deltas


def test_sanitize_removes_escapes_and_control_characters():
    from tkc.cli.chat import sanitize, sanitized

    assert sanitize(HOSTILE) == CLEAN
    for i in range(len(HOSTILE)):  # an escape split across deltas is removed whole, wherever the split falls
        for j in range(i, len(HOSTILE), 7):
            assert "".join(sanitized([HOSTILE[:i], HOSTILE[i:j], HOSTILE[j:]])) == CLEAN, (i, j)
    assert sanitize("plain ünïcödé 中文 \t\n") == "plain ünïcödé 中文 \t\n"


def test_pipe_mode_prints_sanitised_replies_and_keeps_the_raw_history():
    from tkc.cli.chat import ChatSession, pipe_loop

    session = ChatSession(ScriptedEngine(["ok\x1b[", "2Jcleared\x07", " bell\rOVER"]), max_new_tokens=8)
    out = io.StringIO()
    pipe_loop(session, iter(["hi\n", "again\n"]), out.write, show_prompt=True)
    lines = out.getvalue().split("\n")[:-1]
    assert lines == ["user: hi\\nassistant:", "okcleared bellOVER"] + [
        "user: hi\\nassistant: ok\\x1b[2Jcleared\\x07 bell\\rOVER\\nuser: again\\nassistant:",
        "okcleared bellOVER",
    ]  # the shown prompt is exact (the model's raw reply is what it saw); only its output is cleaned
    assert session.history[1]["content"] == "ok\x1b[2Jcleared\x07 bell\rOVER"


def test_an_oversized_message_gets_a_message_not_a_crash():
    from tkc.cli.chat import MAX_LINE_BYTES, ChatSession, pipe_loop

    session = ChatSession(ScriptedEngine(["fine"], context=50), max_new_tokens=8)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err):
        pipe_loop(session, iter(["x" * (MAX_LINE_BYTES + 1) + "\n", "w " * 60 + "\n", "short\n"]), out.write)
    assert out.getvalue() == "\n\nfine\n"  # one (empty) reply line per message; the next message is answered
    assert f"{MAX_LINE_BYTES + 1} bytes, over the {MAX_LINE_BYTES}-byte limit" in err.getvalue()
    assert "over the model's context of 50 tokens" in err.getvalue()
    assert [m["content"] for m in session.history] == ["short", "fine"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A compiled bundle over the tiny Qwen2 (random weights, qwen template) with one infer stage; nothing run."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tkc.bundle.io import write_bundle
    from tkc.compiler import compile_recipe

    src = tmp_path_factory.mktemp("chat-src")
    shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", src / "tiny")
    config = AutoConfig.from_pretrained(src / "tiny")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(src / "tiny")
    (src / "data").mkdir()
    shutil.copy(REPO / "recipes" / "data" / "arith_eval.jsonl", src / "data")
    (src / "recipe.yaml").write_text(
        "schema_version: 1\nname: chat_test\nmodel: {path: tiny, init: pretrained}\ntemplate: auto\n"
        "data: {datasets: {ev: {path: data/arith_eval.jsonl, format: alpaca, max_samples: 2}}}\n"
        "stages: [{kind: infer, name: infer, datasets: [ev], max_new_tokens: 4}]\nhardware: cpu\n",
        encoding="utf-8",
    )
    compiled = compile_recipe(src / "recipe.yaml")
    out = tmp_path_factory.mktemp("chat-bundle") / "run"
    meta = {"source_root": str(compiled.source_root)}
    write_bundle(out, compiled.files, meta, compiled.plan.inputs.tkc_version, False, compiled.sources)
    return out


def unescape(line: str) -> str:
    """The inverse of tkc.cli.chat.escape_line."""

    def one(m: re.Match) -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        return {"n": "\n", "r": "\r"}.get(m.group(2), m.group(2))

    return re.sub(r"\\(?:x([0-9a-f]{2})|(.))", one, line)


@pytest.mark.slow
def test_show_prompt_is_the_template_rendering_and_a_huge_paste_is_refused(bundle):
    from tkc.bundle.chat import render
    from tkc.cli.chat import MAX_LINE_BYTES, sanitize

    huge = "y" * (MAX_LINE_BYTES + 10)
    proc = subprocess.run(
        [sys.executable, "-m", "tkc.cli.chat", str(bundle), "--show-prompt", "--max-new-tokens", "6"],
        input=f"What is 2+3?\n{huge}\nHi\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"{MAX_LINE_BYTES + 10} bytes" in proc.stderr
    lines = proc.stdout.split("\n")[:-1]
    assert len(lines) == 6 and lines[2:4] == ["", ""]  # the refused paste: an empty prompt line and reply
    template = (bundle / "template" / "chat_template.jinja").read_text(encoding="utf-8")
    first = [{"role": "user", "content": "What is 2+3?"}]
    assert unescape(lines[0]) == render(template, first, add_generation_prompt=True, eos_token="<|im_end|>")
    reply = unescape(lines[1])
    assert reply == sanitize(reply)
    second = unescape(lines[4])  # the conversation so far, the raw reply in it, then the new message
    assert second.startswith(unescape(lines[0])) and second.endswith("Hi<|im_end|>\n<|im_start|>assistant\n")
