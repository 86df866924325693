"""Templates that read the clock (strftime_now: GPT-OSS's 'Current date', Llama 3.x, Granite 3.3, ...) render at
the plan's pinned instant (template.now), so one bundle trains on the same tokens every day."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tkc.bundle.chat import ChatTemplate, reads_clock, render  # imports the module tkc.bundle.chat.render
from tkc.bundle.plan import structure_plan
from tkc.catalog.registry import template_text
from tkc.compiler import compile_recipe
from tkc.schema.diagnostics import CompileError
from tkc.schema.template import DEFAULT_NOW

CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
TEMPLATE_FILE = "template/chat_template.jinja"


def _project(root: Path, template: str) -> Path:
    """A GPT-OSS model folder (config and tokenizer config, no weights), one SFT row and a recipe whose
    `template:` line(s) are `template`; the recipe's template block starts at line 3."""
    (root / "model").mkdir(parents=True)
    (root / "model/config.json").write_text(json.dumps({"model_type": "gpt_oss",
                                                        "architectures": ["GptOssForCausalLM"]}))
    (root / "model/tokenizer_config.json").write_text(json.dumps({"eos_token": "<|return|>"}))
    (root / "d.jsonl").write_text(json.dumps({"messages": CONV}) + "\n")
    recipe = root / "r.yaml"
    recipe.write_text(f"name: t\nmodel: {{path: model}}\n{template}\n"
                      "data: {datasets: {d: {path: d.jsonl, format: openai}}}\nstages: [{kind: sft}]\n")
    return recipe


def _chat(recipe: Path) -> ChatTemplate:
    compiled = compile_recipe(recipe)
    plan = structure_plan(compiled.resolved)
    return ChatTemplate.from_plan(plan.template, compiled.files[TEMPLATE_FILE].decode("utf-8"))


def _clock_on(monkeypatch: pytest.MonkeyPatch, day: int) -> None:
    """The system clock as the renderer reads it (datetime.now) shows 2031-05-<day>."""
    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return cls(2031, 5, day, 9, 30, tzinfo=tz)
    monkeypatch.setattr(sys.modules["tkc.bundle.chat.render"], "datetime", Clock)


def test_reads_clock_is_read_from_the_syntax_tree():
    assert reads_clock(template_text("gpt_oss")) and reads_clock(template_text("granite3_3"))
    assert not reads_clock(template_text("qwen2_5"))
    assert not reads_clock("{# strftime_now('%Y') #}{{ messages[0].content }}")   # a comment reads nothing
    assert reads_clock("{% macro d() %}{{ strftime_now('%Y') }}{% endmacro %}{{ d() }}")   # nor a macro's body
    assert reads_clock("{{ strftime_now(")   # a template that does not parse is judged by its text


def _helpers():
    spec = importlib.util.spec_from_file_location("data_helpers", Path(__file__).parents[1] /
                                                  "fixtures/data/data_helpers.py")
    helpers = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    return helpers


def test_a_gpt_oss_row_encodes_identically_on_two_days(tmp_path, monkeypatch):
    """The SFT encoder's rows for one bundle are the same ids on two system dates; the unpinned render, fed
    the same clock, does differ between them (so the clock really moved)."""
    from tkc.runtime.data.encode import Counters, EncodeOptions, encode_sft

    chat = _chat(_project(tmp_path, "template: gpt_oss"))
    tok = _helpers().tokenizer()
    rows, raw = [], []
    for day in (6, 7):
        _clock_on(monkeypatch, day)
        bad: list = []
        rows.append(encode_sft([("r0", {"messages": CONV})], tok, chat, EncodeOptions(cutoff_len=4096), bad.append,
                               Counters()))
        assert not bad and len(rows[-1]) == 1
        raw.append(render(chat.text, CONV[:1], add_generation_prompt=True, **chat.render_kwargs))
    assert "Current date: 2031-05-06" in raw[0] and "Current date: 2031-05-07" in raw[1]
    assert list(rows[0][0]["input_ids"]) == list(rows[1][0]["input_ids"])
    assert list(rows[0][0]["labels"]) == list(rows[1][0]["labels"])
    text, spans = chat.spans(CONV)
    assert f"Current date: {DEFAULT_NOW[:10]}" in text and spans
    assert f"Current date: {DEFAULT_NOW[:10]}" in chat.prompt(CONV[:1])   # inference renders the same header


def test_the_recipe_pins_the_date_with_provenance(tmp_path, monkeypatch):
    recipe = _project(tmp_path, "template:\n  id: gpt_oss\n  now: 2024-03-05")   # an unquoted YAML date
    compiled = compile_recipe(recipe)
    assert compiled.resolved["template"]["now"] == "2024-03-05T00:00:00"
    assert compiled.plan.provenance["template.now"] == "recipe"
    assert compiled.resolved["template"]["id"] == "gpt_oss" and compiled.plan.provenance["template.id"] == "recipe"
    _clock_on(monkeypatch, 6)
    chat = _chat(recipe)
    assert "Current date: 2024-03-05" in chat.spans(CONV)[0]
    assert "Current date: 2024-03-05" in chat.prompt(CONV[:1]) and "2031" not in chat.prompt(CONV[:1])
    other = _project(tmp_path / "b", 'template: {id: gpt_oss, now: "2024-03-05T17:45:00"}')
    assert compile_recipe(other).resolved["template"]["now"] == "2024-03-05T17:45:00"


def test_a_tokenizers_own_template_that_reads_the_clock_is_pinned_too(tmp_path):
    recipe = _project(tmp_path, "template: auto")
    config = json.loads((tmp_path / "model/tokenizer_config.json").read_text())
    (tmp_path / "model/tokenizer_config.json").write_text(json.dumps({**config,
                                                                      "chat_template": template_text("gpt_oss")}))
    compiled = compile_recipe(recipe)
    assert compiled.resolved["template"]["id"] == "auto"
    assert compiled.resolved["template"]["now"] == DEFAULT_NOW and compiled.plan.provenance["template.now"] == "default"


def test_the_data_cache_keys_on_the_instant(tmp_path):
    """Two bundles that differ only in template.now share no cached rows: each row carries its own date."""
    from tkc.runtime.data import build_stage_data

    helpers = _helpers()
    (tmp_path / "s.jsonl").write_text(json.dumps({"messages": CONV}) + "\n")
    entries = [helpers.entry("s", "s.jsonl", "openai", "sft", tmp_path)]
    tok = helpers.tokenizer()
    for day in ("2024-03-05", "2024-03-06"):
        tree = helpers.resolved_tree(entries, "gpt_oss")
        tree["template"]["now"] = f"{day}T00:00:00"
        plan = structure_plan(tree)
        data = build_stage_data(plan, helpers.stage("sft", ["s"]), tok, tmp_path, tmp_path / "cache",
                                template_text=template_text("gpt_oss"))
        assert f"Current date: {day}" in tok.decode(list(data.train[0]["input_ids"]))


def test_a_template_without_a_clock_gains_no_key(tmp_path):
    compiled = compile_recipe(_project(tmp_path, "template: qwen2_5"))
    assert "now" not in compiled.resolved["template"] and "template.now" not in compiled.plan.values


@pytest.mark.parametrize("value", ["2024-13-05", "yesterday", "2024-03-05T25:00:00", "12"])
def test_a_malformed_date_is_refused_at_its_line(tmp_path, tkc, value):
    recipe = _project(tmp_path, f"template:\n  id: gpt_oss\n  now: {value}")
    with pytest.raises(CompileError):
        compile_recipe(recipe)
    code, _, err = tkc("compile", recipe, "-o", tmp_path / "run")
    assert code == 2 and "r.yaml:5:" in err and "template.now" in err and "ISO 8601" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_compile_and_explain_say_which_date_and_where(tmp_path, tkc):
    recipe = _project(tmp_path, "template: gpt_oss")
    code, out, err = tkc("compile", recipe, "--check")
    assert code == 0 and "r.yaml:3:" in err and "TMPL004" in err and DEFAULT_NOW in err
    code, out, _ = tkc("explain", recipe, "template.now")
    assert code == 0 and f'template.now = "{DEFAULT_NOW}"    [default]' in out
    pinned = _project(tmp_path / "b", "template:\n  id: gpt_oss\n  now: 2024-03-05")
    code, out, err = tkc("explain", pinned, "template.now")
    assert code == 0 and 'template.now = "2024-03-05T00:00:00"    [recipe (' in out and "r.yaml:5)]" in out
    assert "TMPL004" not in err
    unused = _project(tmp_path / "c", "template:\n  id: qwen2_5\n  now: 2024-03-05")
    code, _, err = tkc("compile", unused, "--check")
    assert code == 0 and "r.yaml:5:" in err and "TMPL004" in err and "never used" in err


_FAKE_CLOCK = """
import datetime, os
class _Clock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls.fromisoformat(os.environ["FAKE_NOW"])
datetime.datetime = _Clock
"""


def test_catalog_render_training_reads_no_clock_in_a_fresh_process(tmp_path):
    """`tkc catalog render --mode training|inference` in processes whose stdlib clock shows two different days
    (patched before tkc is imported, like faketime): the same text at the default instant; raw mode, the
    vendor's rendering, reads the clock."""
    (tmp_path / "sitecustomize.py").write_text(_FAKE_CLOCK)
    (tmp_path / "conv.json").write_text(json.dumps({"messages": CONV}))

    def run(mode: str, now: str) -> str:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               "FAKE_NOW": now}
        return subprocess.run([sys.executable, "-m", "tkc.cli.main", "catalog", "render", "gpt_oss",
                               str(tmp_path / "conv.json"), "--mode", mode], env=env, capture_output=True,
                              text=True, check=True, timeout=120).stdout

    for mode in ("training", "inference"):
        first, second = run(mode, "2031-05-06T09:00:00"), run(mode, "2032-11-07T23:00:00")
        assert first == second and f"Current date: {DEFAULT_NOW[:10]}" in first, mode
    assert "Current date: 2031-05-06" in run("raw", "2031-05-06T09:00:00")
