"""Helpers of the `tkc serve` tests (loaded by file path: tests are not a package): a trained tiny bundle (a tiny
Qwen2 fine-tuned to answer one question with a tool call, so a real model returns real tool calls, and an rm
stage for /v1/score) and a running `tkc serve` process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "assets" / "tiny-qwen2"
KEY = "tkc-test-key-0123456789abcdef"
WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather of a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
# a compact ChatML template with Qwen's tool-call format (the tokenizer's own, so `template: auto` takes it): the
# tool prompt stays short, so the tiny model learns its one tool call in a few cheap steps
TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\ntools:' }}{%- for t in tools %}{{- ' ' + t.function.name }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content + '\\n' }}{%- endif %}"
    "{%- for tc in message.tool_calls %}{%- set f = tc.function if tc.function is defined else tc %}"
    "{{- '<tool_call>\\n{\\\"name\\\": \\\"' + f.name + '\\\", \\\"arguments\\\": ' + (f.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
RECIPE = """\
schema_version: 1
name: serve_test
model: {path: assets/tiny, init: pretrained}
template: auto
data:
  datasets:
    calls: {path: data/calls.jsonl, format: openai, columns: {tools: tools}}
    arith_pref: {path: data/arith_pref.jsonl, format: alpaca, kind: preference, max_samples: 8}
  cutoff_len: 128
stages:
  - {kind: sft, name: sft, datasets: [calls], train: {learning_rate: 3.0e-3, lr_scheduler: constant, max_steps: 40, global_batch_size: 1}}
  - {kind: rm, name: rm, datasets: [arith_pref], train: {learning_rate: 1.0e-3, max_steps: 1, global_batch_size: 4}}
finetuning: {method: full}
hardware: cpu
"""


def build_bundle(root: Path) -> Path:
    """Compile and train the serve test bundle under `root` (source folder and bundle); returns the bundle."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tkc.bundle.io import write_bundle
    from tkc.compiler import compile_recipe
    from tkc.runtime.run import run_bundle

    src = root / "src"
    shutil.copytree(TINY, src / "assets" / "tiny")
    config = AutoConfig.from_pretrained(TINY)
    config.tie_word_embeddings = False  # a random tied model only repeats its input
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(src / "assets" / "tiny")
    tok_config = src / "assets" / "tiny" / "tokenizer_config.json"
    tok_config.write_text(json.dumps({**json.loads(tok_config.read_text()), "chat_template": TEMPLATE}, indent=1))
    (src / "data").mkdir()
    shutil.copy(REPO / "recipes" / "data" / "arith_pref.jsonl", src / "data" / "arith_pref.jsonl")
    row = {"messages": [*ASK, {**CALL, "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}], "tools": [WEATHER]}
    (src / "data" / "calls.jsonl").write_text((json.dumps(row) + "\n") * 4, encoding="utf-8")
    (src / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    compiled = compile_recipe(src / "recipe.yaml")
    out = root / "run"
    write_bundle(out, compiled.files, {"source_root": str(compiled.source_root)}, compiled.plan.inputs.tkc_version,
                 False, compiled.sources)
    assert run_bundle(out) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: Path, tmp: Path, *extra: str, key: bool = True):
        self.port = free_port()
        self.key = KEY if key else None
        args = [sys.executable, "-m", "tkc.cli.main", "serve", str(bundle), "--port", str(self.port), *extra]
        if key:
            (tmp / "key").write_text(KEY + "\n", encoding="utf-8")
            args += ["--api-key-file", str(tmp / "key")]
        self.log = open(tmp / f"serve-{self.port}.log", "w+")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_ready()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx2 as httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"tkc serve exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/health", headers=self.headers(), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"tkc serve did not come up: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=self.key or "none", max_retries=0, timeout=120, **kw)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
