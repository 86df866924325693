"""VLLMEngine through the Engine interface: the protocol, the missing-extra error, and the mapping onto vLLM's API.

vLLM needs CUDA and is not installed on the CPU test machines, so the mapping test injects a stand-in `vllm`
module into sys.modules that records what it is given. This is the one place a stand-in is used: it checks
our side of the contract (LLM/SamplingParams/LoRARequest arguments, output mapping), not vLLM itself.
"""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import pytest

CHAT = [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "Hi"}]]


def make_ctx(rt, tmp_path: Path, *, init: str = "pretrained", adapter_stages=("sft",)):
    """A hand-written bundle (tiny Qwen2 tokenizer, qwen2_5 template) with fake stage outputs on disk."""
    from tkc.runtime.infer import open_context

    stages = [
        rt.stage("sft", "sft", 0, ["arith_sft"], method="lora"),
        rt.stage("dpo", "dpo", 1, ["dpo_pairs"], method="lora", init_from="sft"),
        rt.stage("infer", "infer", 2, ["arith_eval"], init_from="sft",
                 options={"engine": "vllm", "max_new_tokens": 8, "temperature": 0.0}),
    ]  # fmt: skip
    plan = rt.resolved(stages, init=init, datasets=["arith_sft", "arith_eval"])
    bundle = rt.write_bundle(tmp_path / "b", plan)
    for name in adapter_stages:
        model = bundle / "outputs" / name / "model"
        model.mkdir(parents=True)
        (model / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
        seal(bundle, name)
    return open_context(bundle)


def seal(bundle: Path, name: str) -> None:
    """Finish a fake stage as the runtime does: outputs manifest, then DONE."""
    from tkc.bundle.io import read_manifest
    from tkc.bundle.stage_outputs import write_stage_manifest

    digest = read_manifest(bundle)["bundle_hash"]
    write_stage_manifest(bundle / "outputs" / name, name, digest)
    (bundle / "outputs" / name / "DONE").write_text(digest + "\n")


class FakeVLLM(types.ModuleType):
    """Records LLM(...), SamplingParams(...), LoRARequest(...) and LLM.generate(...) calls."""

    def __init__(self, finish_reason: str = "length"):
        super().__init__("vllm")
        calls: dict = {"generate": []}
        self.calls = calls

        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw

        class LLM:
            def __init__(self, **kw):
                calls["llm"] = kw
                self.llm_engine = FakeLLMEngine(calls)

            def generate(self, prompts, params, lora_request=None, use_tqdm=True):
                calls["generate"].append((list(prompts), params.kw, lora_request))
                out = types.SimpleNamespace(text=" five", token_ids=[1, 2], finish_reason=finish_reason)
                return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

        class LoRARequest:
            def __init__(self, name, int_id, path):
                self.args = (name, int_id, path)

        self.LLM, self.SamplingParams = LLM, SamplingParams
        self.lora = types.ModuleType("vllm.lora")
        self.lora.request = types.ModuleType("vllm.lora.request")
        self.lora.request.LoRARequest = LoRARequest


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.lora", fake.lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", fake.lora.request)
    return fake


class FakeLLMEngine:
    """vLLM's LLMEngine API shape (add_request, step, abort_request, has_unfinished_requests, model_config):
    each step appends one token to every choice of every live request and returns cumulative RequestOutputs.
    Choice i writes " a{i}", " b{i}", ...; with logprobs, each position holds the sampled token at rank 2 and
    a more likely token 99 at rank 1 (the sampled token comes with the top ones whatever its rank)."""

    def __init__(self, calls: dict, max_model_len: int = 64):
        self.calls, self.live, self.gate = calls, {}, None  # gate: a Semaphore each step waits on, when set
        self.model_config = types.SimpleNamespace(max_model_len=max_model_len)
        calls.update(add=[], abort=[])

    def add_request(self, request_id, prompt, params, lora_request=None):
        self.calls["add"].append((request_id, prompt, params.kw, lora_request))
        self.live[request_id] = (prompt["prompt_token_ids"], params.kw, [[] for _ in range(params.kw["n"])])

    def abort_request(self, request_ids):
        self.calls["abort"].append(list(request_ids))
        for rid in request_ids:
            self.live.pop(rid, None)

    def has_unfinished_requests(self):
        return bool(self.live)

    def step(self):
        if self.gate is not None:
            self.gate.acquire()
        outs = []
        for rid, (prompt, kw, choices) in list(self.live.items()):
            for i, toks in enumerate(choices):
                toks.append(100 + 10 * i + len(toks))
            done = len(choices[0]) >= kw["max_tokens"]
            outs.append(types.SimpleNamespace(request_id=rid, prompt_token_ids=prompt, finished=done, outputs=[
                types.SimpleNamespace(
                    index=i, token_ids=list(toks), finish_reason="length" if done else None,
                    text="".join(f" {chr(97 + k % 26)}{i}" for k in range(len(toks))),
                    logprobs=None if kw["logprobs"] is None else [
                        {t: Logprob(-1.5, 2, f"<{t}>"), 99: Logprob(-0.25, 1, "<99>")} for t in toks],
                ) for i, toks in enumerate(choices)]))  # fmt: skip
            if done:
                del self.live[rid]
        return outs


def Logprob(logprob, rank, decoded_token):  # noqa: N802 (vLLM's class name)
    return types.SimpleNamespace(logprob=logprob, rank=rank, decoded_token=decoded_token)


def test_engines_satisfy_the_protocol():
    from tkc.runtime.infer import Engine
    from tkc.runtime.infer.batching import BatchingEngine
    from tkc.runtime.infer.vllm_engine import VLLMEngine

    assert issubclass(BatchingEngine, Engine) and issubclass(VLLMEngine, Engine)


def test_missing_vllm_names_the_extra(rt, tmp_path, monkeypatch):
    from tkc.runtime.infer import load_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    ctx = make_ctx(rt, tmp_path)
    with pytest.raises(RuntimeError, match=r"pip install 'tkc\[vllm\]'"):
        load_engine(ctx, "sft", engine="vllm")
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        load_engine(ctx, "sft", engine="tgi")


def test_parameters_map_onto_vllm(rt, tmp_path, fake_vllm):
    from tkc.bundle.chat import render
    from tkc.runtime.infer import Completion, load_engine

    ctx = make_ctx(rt, tmp_path)
    engine = load_engine(ctx, "infer", engine="vllm")  # an infer stage: the model it reads (sft's adapter)
    llm = fake_vllm.calls["llm"]
    assert llm["model"] == ctx.model_path() and llm["tokenizer"] == ctx.model_path()
    assert llm["enable_lora"] is True and llm["max_lora_rank"] == 8 and llm["seed"] == 42

    got = engine.generate(CHAT, max_new_tokens=5, temperature=0.0, stop=["\n\n", "<|endoftext|>"], seed=3)
    assert got == [Completion(" five", [1, 2], "length")] * 2
    prompts, params, lora = fake_vllm.calls["generate"][-1]
    tok = ctx.tokenizer()
    assert prompts == [
        render(ctx.chat_template(), m, add_generation_prompt=True, eos_token="<|im_end|>") for m in CHAT
    ]
    assert params == {"n": 1, "max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": 3,
                      "stop": ["\n\n"], "skip_special_tokens": True, "include_stop_str_in_output": False,
                      "repetition_penalty": 1.0,
                      "stop_token_ids": sorted(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))}  # fmt: skip
    assert lora.args == ("sft", 1, str(ctx.stage_dir("sft") / "model"))

    engine.generate(CHAT[:1], temperature=0.7, top_p=0.9, seed=11)
    _, params, _ = fake_vllm.calls["generate"][-1]
    assert (params["temperature"], params["top_p"], params["seed"], params["max_tokens"]) == (
        0.7,
        0.9,
        11,
        128,
    )
    assert list(engine.stream(CHAT[0], max_new_tokens=3)) == [" a0", " b0", " c0"]  # token by token
    engine.close()


def test_finish_reason_stop_and_full_weights(rt, tmp_path, monkeypatch):
    from tkc.runtime.infer import load_engine

    fake = FakeVLLM(finish_reason="stop")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    ctx = make_ctx(rt, tmp_path, adapter_stages=())
    (ctx.stage_dir("sft") / "model").mkdir(parents=True)  # full weights (no adapter_config.json)
    (ctx.stage_dir("sft") / "model" / "model.safetensors").write_bytes(b"fake")
    seal(ctx.bundle_dir, "sft")
    engine = load_engine(ctx, "sft", engine="vllm")
    assert (
        fake.calls["llm"]["model"] == str(ctx.stage_dir("sft") / "model")
        and "enable_lora" not in fake.calls["llm"]
    )
    assert engine.generate(CHAT[:1])[0].finish_reason == "stop"


def test_weights_vllm_cannot_load_are_refused(rt, tmp_path, fake_vllm):
    from tkc.runtime.infer.vllm_engine import weights_for

    ctx = make_ctx(rt, tmp_path, adapter_stages=("sft", "dpo"))
    with pytest.raises(RuntimeError, match="adapter on another adapter"):
        weights_for(ctx, "dpo")
    scratch = make_ctx(rt, tmp_path / "scratch", init="scratch")
    with pytest.raises(RuntimeError, match="init: scratch"):
        weights_for(scratch, "sft")


def test_submit_translates_requests_and_outputs(rt, tmp_path, fake_vllm):
    from tkc.runtime.infer import load_engine
    from tkc.runtime.infer.engine import SamplingParams

    ctx = make_ctx(rt, tmp_path)
    engine = load_engine(ctx, "infer", engine="vllm")
    try:
        params = SamplingParams(max_new_tokens=3, temperature=0.5, stop=("\n\n",), seed=4, n=2, logprobs=True,
                                top_logprobs=1)  # fmt: skip
        h = engine.submit(CHAT[0], params)
        deltas = list(h)
        rid, prompt, kw, lora = fake_vllm.calls["add"][-1]
        tok = ctx.tokenizer()
        assert prompt == {
            "prompt_token_ids": tok(engine.render(CHAT[0]), add_special_tokens=False)["input_ids"]
        }
        assert (kw["n"], kw["logprobs"], kw["seed"], kw["temperature"], kw["stop"]) == (
            2,
            1,
            4,
            0.5,
            ["\n\n"],
        )
        assert kw["stop_token_ids"] == [tok.convert_tokens_to_ids("<|im_end|>")]  # the template's stop, eos
        assert lora.args[0] == "sft"
        two = h.result(timeout=30)
        assert [c.text for c in two] == [" a0 b0 c0", " a1 b1 c1"] and [c.tokens for c in two] == [
            [100, 101, 102], [110, 111, 112]]  # fmt: skip
        assert all(c.finish_reason == "length" for c in two)
        assert [d.text for d in deltas if d.index == 1] == [
            " a1",
            " b1",
            " c1",
        ]  # only the new part each step
        assert [d.usage for d in deltas if d.finish_reason] == [
            rt_usage(len(prompt["prompt_token_ids"]), 3)
        ] * 2
        lp = two[0].logprobs[0]
        assert (lp.token_id, lp.token, lp.logprob, lp.top) == (100, "<100>", -1.5, ((99, "<99>", -0.25),))
        assert engine.count_tokens(CHAT[0]) == h.usage().prompt_tokens and engine.max_context() == 64
    finally:
        engine.close()


def rt_usage(prompt_tokens, completion_tokens):
    from tkc.runtime.infer.engine import Usage

    return Usage(prompt_tokens, completion_tokens)


def test_cancel_aborts_the_vllm_request_and_refusals(rt, tmp_path, fake_vllm):
    from tkc.runtime.infer import load_engine
    from tkc.runtime.infer.engine import PromptTooLong, SamplingParams

    ctx = make_ctx(rt, tmp_path)
    engine = load_engine(ctx, "infer", engine="vllm")
    gate = engine.llm.llm_engine.gate = threading.Semaphore(1)  # one step, then each step when released
    try:
        with pytest.raises(PromptTooLong, match="over the model's context of 64"):
            engine.submit(CHAT[0], SamplingParams(max_new_tokens=60))
        h = engine.submit("x", SamplingParams(max_new_tokens=40, logprobs=False))
        first = next(iter(h))
        assert first.text == " a0" and first.logprobs is None
        h.cancel()
        gate.release(100)
        done = h.result(timeout=30)[0]
        assert done.finish_reason == "cancelled" and len(done.tokens) in (1, 2)  # one step at most after
        assert fake_vllm.calls["abort"] == [[fake_vllm.calls["add"][-1][0]]]
        nxt = engine.submit("y", SamplingParams(max_new_tokens=2)).result(timeout=30)[0]
        assert nxt.finish_reason == "length" and nxt.text == " a0 b0"
    finally:
        engine.close()
