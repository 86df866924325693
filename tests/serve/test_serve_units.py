"""`tkc serve` pieces without a server: tool-call formats read from the catalog templates, request validation,
the bind and API-key rules (the CLI refuses before loading anything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tkc.bundle.chat import ChatTemplate
from tkc.hosts import is_loopback
from tkc.runtime.serve.protocol import MEDIA_REFUSED, ChatRequest, ScoreRequest
from tkc.runtime.serve.server import ServeRefused, read_api_key
from tkc.runtime.serve.tools import may_be_call, parse_calls, probe_format

TEMPLATES = Path(__file__).resolve().parents[2] / "src" / "tkc" / "catalog" / "templates"


def template(tid: str) -> ChatTemplate:
    y = yaml.safe_load((TEMPLATES / f"{tid}.yaml").read_text(encoding="utf-8"))
    return ChatTemplate((TEMPLATES / f"{tid}.jinja").read_text(encoding="utf-8"), y.get("bos_token") or "",
                        y.get("eos_token") or "", tuple(y.get("stop_tokens") or ()), y.get("render_kwargs") or {})


@pytest.mark.parametrize(("tid", "opening", "args_key", "listed"), [
    ("qwen2_5", "<tool_call>", "arguments", False), ("qwen3", "<tool_call>", "arguments", False),
    ("llama3_1", "", "parameters", False), ("mistral_v3", "[TOOL_CALLS]", "arguments", True)])
def test_tool_format_is_read_from_the_template(tid, opening, args_key, listed):
    tf = probe_format(template(tid))
    assert tf is not None and (tf.opening, tf.name_key, tf.args_key, tf.listed) == (opening, "name", args_key, listed)


def test_templates_without_json_tool_calls_have_no_format():
    assert probe_format(template("chatml")) is None and probe_format(None) is None


def test_parse_calls_in_each_format():
    qwen = probe_format(template("qwen2_5"))
    assert qwen is not None
    text = 'Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>\n{"name": "time", "arguments": {}}\n</tool_call>'
    content, calls = parse_calls(text, qwen)
    assert content == "Let me look." and [c["function"]["name"] for c in calls] == ["weather", "time"]
    assert calls[0]["function"]["arguments"] == '{"city": "Paris"}' and calls[0]["id"] != calls[1]["id"]
    assert parse_calls("no call here", qwen) == ("no call here", [])
    broken = '<tool_call>\n{"name": "weather", "arguments": {"city": '
    assert parse_calls(broken, qwen) == (broken, [])  # a cut-off call stays content
    mistral = probe_format(template("mistral_v3"))
    assert mistral is not None
    _, calls = parse_calls('[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]',
                           mistral)
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    llama = probe_format(template("llama3_1"))
    assert llama is not None
    _, calls = parse_calls('{"name": "weather", "parameters": {"city": "Oslo"}}', llama)
    assert calls[0]["function"]["arguments"] == '{"city": "Oslo"}'
    assert parse_calls("The answer is 4.", llama) == ("The answer is 4.", [])


def test_streaming_holds_back_only_what_may_be_a_call():
    qwen = probe_format(template("qwen2_5"))
    assert qwen is not None
    assert may_be_call("hello", qwen) == 5
    assert may_be_call("hello <tool", qwen) == 6
    assert may_be_call("hi <tool_call>\n{", qwen) == 3


def _chat(**kw) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize(("body", "needle"), [
    (_chat(max_tokens="5"), "valid integer"),
    (_chat(n=True), "valid integer"),
    (_chat(temperature="hot"), "valid number"),
    (_chat(temperature=3), "less than or equal to 2"),
    ({"model": "m", "messages": []}, "at least 1 item"),
    (_chat(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]), "may only come first"),
    (_chat(messages=[{"role": "tool", "content": "r"}]), "must follow an assistant"),
    (_chat(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), "last message"),
    (_chat(messages=[{"role": "wizard", "content": "a"}]), "role"),
    (_chat(chat_template="{{ messages }}"), "chat template is refused"),
    (_chat(chat_template_kwargs={"enable_thinking": False}), "chat template is refused"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), MEDIA_REFUSED),  # no image_url
    (_chat(messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]),
     MEDIA_REFUSED),
    (_chat(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), MEDIA_REFUSED),  # no input_audio
    (_chat(top_logprobs=2), "top_logprobs needs logprobs"),
    # JSON's "\ud800" escape decodes to a lone surrogate the tokenizer cannot take (was a 500 TypeError)
    (_chat(messages=[{"role": "user", "content": "a\ud800"}]), "messages.0.content: a string holds an unpaired"),
    (_chat(messages=[{"role": "user", "content": "w"}, {"role": "assistant", "tool_calls": [{"type": "function",
     "function": {"name": "f", "arguments": '{"city": "\udc00"}'}}]}, {"role": "tool", "content": "ok"}]),
     "messages.1.tool_calls.0.function.arguments: a string holds an unpaired"),
    (_chat(stop=["ok", "\ud83d"]), "stop.1: a string holds an unpaired"),
])
def test_request_validation_refuses(body, needle):
    with pytest.raises(ValidationError) as e:
        ChatRequest.model_validate(body)
    assert needle in str(e.value)


def test_request_validation_accepts_text_parts_and_a_tool_round_trip():
    req = ChatRequest.model_validate(_chat(messages=[
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], user="someone"))
    assert req.messages[0].text() == "Be brief." and req.messages[2].tool_calls
    with pytest.raises(ValidationError, match="last message must be from assistant"):
        ScoreRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "q"}]})


def test_bind_and_key_rules(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert read_api_key(None, "127.0.0.1") is None
    with pytest.raises(ServeRefused, match="--api-key-file"):
        read_api_key(None, "0.0.0.0")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ServeRefused, match="at least 16"):
        read_api_key(tmp_path / "short", "0.0.0.0")
    (tmp_path / "good").write_text("  k" * 1 + "x" * 20 + "\n")
    assert read_api_key(tmp_path / "good", "0.0.0.0") == "k" + "x" * 20
    with pytest.raises(ServeRefused, match="cannot read"):
        read_api_key(tmp_path / "missing", "127.0.0.1")


def test_cli_refuses_a_public_bind_without_a_key_before_loading(tmp_path):
    """Exit 2 and a message naming the fix; the bundle is never opened (it does not even exist)."""
    r = subprocess.run([sys.executable, "-m", "tkc.cli.main", "serve", str(tmp_path / "nothing"), "--host",
                        "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--api-key-file" in r.stderr and "Traceback" not in r.stderr


def test_generation_defaults_come_from_the_infer_stage_reading_the_served_model():
    """`tkc serve --stage infer` and serving the model an infer stage reads use that stage's options;
    another model gets OpenAI's defaults (None here)."""
    from types import SimpleNamespace

    from tkc.bundle.plan import structure_plan
    from tkc.compiler import compile_recipe
    from tkc.runtime.serve.backend import infer_defaults

    root = Path(__file__).resolve().parents[2]
    ctx = SimpleNamespace(plan=structure_plan(compile_recipe(root / "recipes" / "tiny_sft_dpo.yaml").resolved))
    by_name = infer_defaults(ctx, "infer", "dpo")  # type: ignore[arg-type]
    assert by_name is not None and (by_name.max_new_tokens, by_name.temperature) == (8, 0.0)
    assert infer_defaults(ctx, None, "dpo") == by_name  # type: ignore[arg-type]
    assert infer_defaults(ctx, "sft", "sft") is None  # type: ignore[arg-type]


def test_a_taken_or_impossible_port_is_refused_before_loading():
    import socket

    from tkc.runtime.serve.server import check_bind

    with pytest.raises(ServeRefused, match="1 to 65535"):
        check_bind("127.0.0.1", 70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServeRefused, match="cannot listen on 127.0.0.1"):
            check_bind("127.0.0.1", taken.getsockname()[1])


def test_cli_without_the_serve_extra_says_what_to_install():
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['tkc', 'serve', 'nowhere']\n"
            "from tkc.cli.main import main; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "tkc[serve]" in r.stderr and "Traceback" not in r.stderr
