"""A real `tkc serve` process over a trained tiny bundle, driven by the official `openai` client and raw HTTP:
generation routes, tool calls, usage, the prompt `tkc chat` sends, and every security rule."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx2 as httpx
import pytest

_spec = importlib.util.spec_from_file_location("serve_helpers", Path(__file__).parent / "serve_helpers.py")
assert _spec and _spec.loader
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
ASK, KEY, WEATHER, Server = H.ASK, H.KEY, H.WEATHER, H.Server

pytestmark = pytest.mark.slow
MODEL = "serve_test/sft"


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]
    health = httpx.get(server.url + "/health", headers=server.headers()).json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_whole_and_streamed_replies_agree_with_usage(server):
    client = server.client()
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    prompt = _prompt(server, ASK)
    assert whole.usage.prompt_tokens == len(_tokenizer(server)(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= whole.usage.completion_tokens <= 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_n2_seeded_sampling_and_logprobs(server):
    client = server.client()
    kw = {"model": MODEL, "messages": ASK, "max_tokens": 10, "temperature": 1.0, "seed": 7, "n": 2}
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert a.choices[0].message.content != a.choices[1].message.content  # each choice its own draw
    lp = client.chat.completions.create(**kw, logprobs=True, top_logprobs=3)
    assert lp.usage.completion_tokens == sum(len(c.logprobs.content) for c in lp.choices)
    for choice in lp.choices:
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in choice.logprobs.content)


def test_stop_sequences_cut_the_reply(server):
    client = server.client()
    full = client.completions.create(model=MODEL, prompt="12+30=", max_tokens=16, temperature=0).choices[0].text
    assert len(full) >= 4, full
    stop = full[2:4]
    cut = client.completions.create(model=MODEL, prompt="12+30=", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="12+30=", max_tokens=16, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.find(stop)]


def test_tool_calls_round_trip(server):
    """The model was fine-tuned to answer ASK with a weather call: the client gets it in the OpenAI shape, sends
    the result back, and the server renders that conversation with the template."""
    client = server.client()
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=72, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=72,
                                                 temperature=0, stream=True))
    streamed = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [(t.function.name, json.loads(t.function.arguments)) for t in streamed] == [("weather", {"city": "Paris"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 20}'}]
    after = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=4,
                                           temperature=0)
    expected = _prompt(server, [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 20}', "tool_call_id": call.id}], tools=[WEATHER])
    assert after.usage.prompt_tokens == len(_tokenizer(server)(expected, add_special_tokens=False)["input_ids"])


def test_the_server_answers_as_tkc_chat_does(server, bundle):
    """The same message through `tkc chat --show-prompt` (pipe mode, greedy) and the server: the prompt chat shows
    is the one the server counts (the template applied as in training), and the reply text is identical."""
    from tkc.cli.chat import escape_line

    proc = subprocess.run([sys.executable, "-m", "tkc.cli.main", "chat", str(bundle), "--stage", "sft",
                           "--max-new-tokens", "10", "--show-prompt"], input="Weather in Paris?\n",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown, replied = proc.stdout.split("\n")[:2]
    served = server.client().chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0)
    prompt = _prompt(server, ASK)
    assert shown == escape_line(prompt)
    assert served.usage.prompt_tokens == len(_tokenizer(server)(prompt, add_special_tokens=False)["input_ids"])
    assert replied == escape_line(served.choices[0].message.content)


def test_every_route_needs_the_key(server):
    spec = httpx.get(server.url + "/openapi.json", headers=server.headers()).json()
    routes = [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/health") in routes
    routes.append(("GET", "/openapi.json"))
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-000"}, {"Authorization": KEY}):
            r = httpx.request(method, server.url + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.request(method, server.url + path, headers=server.headers(), json={})
        assert ok.status_code != 401


def _post(server, path: str, **kw) -> httpx.Response:
    return httpx.post(server.url + path, headers={**server.headers(), **kw.pop("headers", {})}, timeout=120, **kw)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_limits_are_answered_before_model_work(server):
    chat = "/v1/chat/completions"
    big = "x" * (1 << 20)
    assert _error(_post(server, chat, json={"model": MODEL, "messages": [{"role": "user", "content": big}]}),
                  413)["code"] == "request_too_large"
    long = " ".join(["word"] * 600)
    err = _error(_post(server, chat, json={"model": MODEL, "messages": [{"role": "user", "content": long}],
                                           "max_tokens": 8}), 400)
    assert err["code"] == "context_length_exceeded" and "512" in err["message"] and "max_tokens is 8" in err["message"]
    assert _error(_post(server, chat, json={"model": MODEL, "messages": ASK, "n": 99}), 400)["param"] == "n"
    assert _error(_post(server, chat, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 9999}), 400)["param"] == "max_tokens"
    assert _error(_post(server, chat, json={"model": MODEL, "messages": ASK, "stop": list("abcdef")}),
                  400)["param"] == "stop"
    assert _error(_post(server, chat, json={"model": "other", "messages": ASK}), 404)["code"] == "model_not_found"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"3", b'"text"', b"null", b"",
                                  b'{"model": "serve_test/sft", "messages": "hi"}',
                                  b'{"model": "serve_test/sft", "messages": [{"role": "user", "content": "hi"}], '
                                  b'"max_tokens": "5"}',
                                  b'{"model": "serve_test/sft", "messages": []}',
                                  b'{"model": "serve_test/sft", "messages": [{"role": "assistant", "content": "a"}]}',
                                  b'{"model": "serve_test/sft", "messages": [{"role": "user", "content": "a"}], '
                                  b'"chat_template": "{{ 1 }}"}',
                                  b'{"model": "serve_test/sft", "messages": [{"role": "user", "content": [{"type": '
                                  b'"image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}'])
def test_malformed_bodies_are_4xx_with_an_openai_error(server, body):
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/score"):
        r = _post(server, path, content=body, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        _error(r, r.status_code)
    r = _post(server, "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    if b"image_url" in body:
        assert "media not supported" in r.json()["error"]["message"]
    if b"chat_template" in body:
        assert "chat template is refused" in r.json()["error"]["message"]


def test_disconnected_streams_free_their_slots(server):
    """50 clients each read the first chunk of a long stream and hang up: nothing stays in flight, the next
    request is served, and memory stays about flat."""
    body = {"model": MODEL, "messages": ASK, "max_tokens": 32, "stream": True, "temperature": 0}
    _drop_after_first_chunk(server, body)  # warm: the first requests grow caches
    rss = server.rss_kib()
    before = _wait_idle(server)["engine"]
    for _ in range(49):
        _drop_after_first_chunk(server, body)
    health = _wait_idle(server)
    assert health["in_flight"] == 0
    # each dropped request was cut off: far fewer decoded rows than 49 full 32-token replies
    assert health["engine"]["rows_decoded"] - before["rows_decoded"] < 49 * 32 // 2, (before, health)
    reply = server.client().chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0)
    assert reply.choices[0].message.content is not None
    assert server.rss_kib() < rss + 64 * 1024, (rss, server.rss_kib())


def _drop_after_first_chunk(server, body: dict) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=server.headers(), json=body,
                      timeout=120) as r:
        assert r.status_code == 200
        next(r.iter_lines())


def _wait_idle(server, timeout: float = 60) -> dict:
    import time

    end = time.monotonic() + timeout
    while True:
        health = httpx.get(server.url + "/health", headers=server.headers()).json()
        if health["in_flight"] == 0 or time.monotonic() > end:
            return health
        time.sleep(0.2)


def test_a_burst_over_the_queue_gets_429_and_the_admitted_finish(server):
    """The server admits 4 requests in flight (--max-inflight 4); 40 at once: the rest get 429 + Retry-After."""
    results: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(40)

    def one():
        barrier.wait()
        r = _post(server, "/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 16,
                                                        "temperature": 0})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    codes = sorted(r.status_code for r in results)
    assert len(codes) == 40 and set(codes) <= {200, 429}, codes
    refused = [r for r in results if r.status_code == 429]
    assert refused and codes.count(200) >= 4, codes
    assert all(r.headers.get("retry-after") and r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    assert all(r.json()["choices"][0]["message"]["content"] is not None for r in results if r.status_code == 200)
    assert _wait_idle(server)["in_flight"] == 0


def test_openapi_fuzzing_finds_no_server_error(server, tmp_path):
    """schemathesis generates requests from /openapi.json (bounded): no 500 anywhere."""
    proc = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
                           "-H", f"Authorization: Bearer {KEY}", "--checks", "not_a_server_error",
                           "--max-examples", "30", "--seed", "1", "--request-timeout", "60",
                           "--phases", "examples,coverage,fuzzing", "--generation-deterministic"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its .schemathesis/ there
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_score_route_on_the_rm_stage(bundle, tmp_path):
    """An rm stage, named, is served for scoring (without --stage the server takes the last language model)."""
    rm = Server(bundle, tmp_path, "--stage", "rm", key=False)
    try:
        convo = [*ASK, {"role": "assistant", "content": "Sunny."}]
        r = httpx.post(rm.url + "/v1/score", json={"model": "serve_test/rm", "messages": convo}, timeout=120)
        assert r.status_code == 200, r.text
        again = httpx.post(rm.url + "/v1/score", json={"model": "serve_test/rm", "messages": convo}).json()
        other = httpx.post(rm.url + "/v1/score", json={"model": "serve_test/rm", "messages": [
            *ASK, {"role": "assistant", "content": "It rains a lot in Paris today."}]}).json()
        assert isinstance(r.json()["score"], float) and r.json()["score"] == again["score"] != other["score"]
        assert r.json()["usage"]["prompt_tokens"] > 0
        chat = httpx.post(rm.url + "/v1/chat/completions", json={"model": "serve_test/rm", "messages": ASK})
        assert _error(chat, 400)["code"] == "wrong_route"
        assert httpx.get(rm.url + "/v1/models").json()["data"][0]["id"] == "serve_test/rm"
    finally:
        rm.stop()


def _prompt(server, messages, tools=None) -> str:
    from tkc.runtime.infer import open_context
    from tkc.runtime.infer.engine import chat_template

    return chat_template(open_context(_bundle_of(server))).prompt(messages, tools=tools)


def _bundle_of(server):
    return Path(server.proc.args[4])


def _tokenizer(server):
    from tkc.runtime.infer import open_context

    return open_context(_bundle_of(server)).tokenizer()
