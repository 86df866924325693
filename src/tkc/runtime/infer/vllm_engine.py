"""VLLMEngine: the Engine interface on vLLM (CUDA/ROCm only; `pip install tkc[vllm]`).

generate() uses the offline `LLM.generate`; submit() drives the `LLM`'s own `LLMEngine` (add_request, step,
abort_request) from one scheduler thread, vLLM's continuous batching doing the batching, and translates each
cumulative RequestOutput into our Deltas. vLLM cannot be installed where tkc is built and tested, so this
translation is tested against a stand-in with vLLM's API shape (tests/runtime/test_infer_vllm.py).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.context import RunContext
from tkc.runtime.infer.engine import (
    Completion,
    Delta,
    EngineBusy,
    Handle,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenIds,
    TokenLogprob,
    Usage,
    chat_template,
    render_prompt,
    split_stops,
    stream_text,
)

MISSING = (
    "engine 'vllm' needs the vllm package, which is not installed: pip install 'tkc[vllm]' "
    "(vLLM runs on CUDA/ROCm GPUs only); or use engine: hf"
)


def import_vllm():
    """The vllm module, imported only when a VLLMEngine is built; a clear error naming the extra otherwise."""
    try:
        import vllm
    except ImportError as e:
        raise RuntimeError(MISSING) from e
    return vllm


def sampling_kwargs(
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: Sequence[str],
    seed: int,
    stop_token_ids: Iterable[int] = (),
) -> dict[str, Any]:
    """SamplingParams arguments equivalent to HFEngine's: greedy at temperature 0, no top-k, specials skipped."""
    sample = temperature > 0
    return {
        "n": 1,
        "max_tokens": max_new_tokens,
        "temperature": temperature if sample else 0.0,
        "top_p": top_p if sample else 1.0,
        "top_k": -1,
        "seed": seed,
        "stop": list(stop),
        "stop_token_ids": sorted(stop_token_ids),
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
        "repetition_penalty": 1.0,
    }


def weights_for(ctx: RunContext, stage_name: str | None) -> tuple[str, str | None]:
    """(full-weights directory or hub id, adapter directory or None) that vLLM can load for the stage's model."""
    if stage_name is None:
        if ctx.plan.model.init == "scratch":
            raise RuntimeError(
                "the bundle's base model is a seeded random init (init: scratch), which vLLM cannot "
                "rebuild; run a training stage first, or use engine: hf"
            )
        return ctx.model_path(), None
    from tkc.runtime.stage_manifest import require_intact

    model_dir = require_intact(ctx, stage_name) / "model"  # checked against its manifest before vLLM reads it
    if not (model_dir / "adapter_config.json").exists():
        return str(model_dir), None
    base, adapter = weights_for(ctx, ctx.stage_by_name(stage_name).init_from)
    if adapter is not None:
        raise RuntimeError(
            f"stage {stage_name!r} is an adapter on another adapter; vLLM serves one adapter over "
            "full weights: add an export stage (merge_adapter: true) and infer from it"
        )
    return base, str(model_dir)


def _lora_rank(adapter_dir: str) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))["r"])


class VLLMEngine:
    """Engine over `vllm.LLM`: prompts rendered by tkc (same template text as HFEngine), LoRA via LoRARequest."""

    def __init__(
        self, llm, tokenizer, fmt: ChatTemplate | None, lora_request=None, *, max_waiting: int = 256
    ):
        self.llm, self.tok, self.fmt, self.lora_request = llm, tokenizer, fmt, lora_request
        self.vllm = import_vllm()
        self.max_waiting = max_waiting
        self._cv = threading.Condition()
        self._new: list[tuple[str, Any, Any, _Live]] = []  # added by submit, handed to vLLM by the scheduler
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_bundle(
        cls, ctx: RunContext, stage_name: str | None, *, dtype: str = "auto", **llm_kwargs: Any
    ) -> VLLMEngine:
        vllm = import_vllm()
        weights, adapter = weights_for(ctx, stage_name)
        m = ctx.plan.model
        kwargs: dict[str, Any] = {
            "model": weights,
            "tokenizer": ctx.model_path(),
            "dtype": dtype,
            "seed": ctx.plan.seed,
            "trust_remote_code": m.trust_remote_code,
        }
        if stage_name is None and m.source == "hub":
            kwargs["revision"] = m.revision
        lora = None
        if adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(adapter))
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(stage_name, 1, adapter)
        return cls(vllm.LLM(**{**kwargs, **llm_kwargs}), ctx.tokenizer(), chat_template(ctx), lora)

    def params(
        self, *, max_new_tokens: int, temperature: float, top_p: float, stop: Sequence[str], seed: int
    ):
        """The template's stop tokens and `stop`: special tokens as stop_token_ids, the rest as stop strings."""
        ids, strings = split_stops(self.tok, self.fmt, stop)
        return self.vllm.SamplingParams(
            **sampling_kwargs(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                stop=strings,
                stop_token_ids=ids,
            )
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[Completion]:
        params = self.params(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
        )
        texts = [render_prompt(self.fmt, p) for p in prompts]
        outs = self.llm.generate(texts, params, lora_request=self.lora_request, use_tqdm=False)
        return [_completion(o.outputs[0]) for o in outs]

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> Iterator[str]:
        """Text deltas as vLLM's engine produces them (submit); a reader that stops early aborts the request."""
        return stream_text(self, prompt, SamplingParams(max_new_tokens, temperature, top_p, tuple(stop), seed))

    # --- the concurrent interface -------------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, TokenIds):
            return self.tok.decode(list(prompt.ids))
        return render_prompt(self.fmt, prompt)

    def _encode(self, prompt: Prompt) -> list[int]:
        ids = (
            list(prompt.ids)
            if isinstance(prompt, TokenIds)
            else self.tok(self.render(prompt), add_special_tokens=False)["input_ids"]
        )
        if not ids:
            raise ValueError("an empty prompt: nothing to continue from")
        return ids

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self._encode(prompt))

    def max_context(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def submit(self, prompt: Prompt, params: SamplingParams, *, bounded: bool = True) -> Handle:
        """Queue a request for vLLM's engine (thread-safe); refusals as BatchingEngine's, before any model work."""
        ids = self._encode(prompt)
        if len(ids) + params.max_new_tokens > self.max_context():
            raise PromptTooLong(len(ids), params.max_new_tokens, self.max_context())
        handle = Handle(params.n, len(ids), params.logprobs)
        vparams = self.vllm.SamplingParams(
            **request_kwargs(params, *split_stops(self.tok, self.fmt, params.stop))
        )
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if bounded and len(self._live) + len(self._new) >= self.max_waiting:
                raise EngineBusy(
                    f"{len(self._live)} requests are in vLLM's engine (the limit); try again later"
                )
            rid = f"tkc-{next(self._ids)}"
            self._new.append(
                (rid, {"prompt_token_ids": ids}, vparams, _Live(handle, params.n, params.top_logprobs))
            )
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tkc-vllm", daemon=True)
                self._thread.start()
            self._cv.notify()
        return handle

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        """The one thread that calls vLLM's engine: add new requests, abort cancelled ones, step, translate."""
        engine = self.llm.llm_engine
        while True:
            with self._cv:
                while not self._new and not self._live and not self._closed:
                    self._cv.wait()
                if self._closed:
                    break
                new, self._new = self._new, []
            for rid, prompt, vparams, live in new:
                self._live[rid] = live
                engine.add_request(rid, prompt, vparams, lora_request=self.lora_request)
            gone = [rid for rid, live in self._live.items() if live.handle.cancelled]
            if gone:
                engine.abort_request(gone)
                for rid in gone:
                    self._live.pop(rid).finish_all("cancelled")
            try:
                outputs = engine.step() if engine.has_unfinished_requests() else []
            except Exception as e:  # the requests in flight fail; the engine goes on
                for live in self._live.values():
                    live.handle.fail(e)
                self._live.clear()
                continue
            for out in outputs:
                got = self._live.get(out.request_id)
                if got is not None and got.update(out):
                    del self._live[out.request_id]
        for live in [*self._live.values(), *(n[3] for n in self._new)]:
            live.finish_all("cancelled")


@dataclass
class _Live:
    """What has been handed on of one request: per choice, characters and tokens already sent."""

    handle: Handle
    n: int
    top: int = 0  # top_logprobs asked for
    chars: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)

    def __post_init__(self):
        self.chars, self.tokens = [0] * self.n, [0] * self.n

    def update(self, out) -> bool:
        """Hand on the new part of each choice of a cumulative RequestOutput; True once every choice finished."""
        for c in out.outputs:
            if c.index in self.finished:
                continue
            delta = to_delta(
                c, self.chars[c.index], self.tokens[c.index], len(out.prompt_token_ids), self.top
            )
            self.chars[c.index], self.tokens[c.index] = len(c.text), len(c.token_ids)
            if delta.finish_reason is not None:
                self.finished.add(c.index)
            self.handle.put(delta)
        return len(self.finished) == self.n

    def finish_all(self, reason: str) -> None:
        for i in range(self.n):
            if i not in self.finished:
                self.handle.put(
                    Delta(i, "", finish_reason=reason, usage=Usage(self.handle.prompt_tokens, self.tokens[i]))
                )
        self.finished = set(range(self.n))


def request_kwargs(params: SamplingParams, stop_ids: set[int], strings: list[str]) -> dict[str, Any]:
    """vllm.SamplingParams arguments for our SamplingParams: as sampling_kwargs, plus n and logprobs (vLLM
    returns the sampled token's logprob and the top ones; 0 asks for the sampled token's only)."""
    kwargs = sampling_kwargs(
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=strings,
        seed=params.seed,
        stop_token_ids=stop_ids | set(params.stop_token_ids),
    )
    kwargs["n"] = params.n
    kwargs["logprobs"] = params.top_logprobs if params.logprobs else None
    return kwargs


def to_delta(out, chars: int, tokens: int, prompt_tokens: int, top: int = 0) -> Delta:
    """The part of a cumulative CompletionOutput after `chars` characters and `tokens` tokens, as a Delta;
    vLLM's finish_reason "length" stays, "abort" is "cancelled", any other ("stop" and the rest) is "stop"."""
    ids = tuple(out.token_ids[tokens:])
    logprobs = None
    if out.logprobs is not None:
        logprobs = tuple(_logprob(t, d, top) for t, d in zip(ids, out.logprobs[tokens:], strict=True))
    reason = out.finish_reason
    if reason is not None:
        reason = {"length": "length", "abort": "cancelled"}.get(reason, "stop")
    usage = Usage(prompt_tokens, len(out.token_ids)) if reason is not None else None
    return Delta(out.index, out.text[chars:], ids, logprobs, reason, usage)


def _logprob(token: int, options: dict, top: int) -> TokenLogprob:
    """vLLM's {token id: Logprob(logprob, rank, decoded_token)} for one position holds the `top` most likely
    tokens (ranks 1..top) and the sampled token, whatever its rank."""
    ranked = sorted((v.rank, t, v.decoded_token or "", float(v.logprob)) for t, v in options.items())
    mine = options[token]
    alts = tuple((t, text, lp) for rank, t, text, lp in ranked if rank <= top)
    return TokenLogprob(token, mine.decoded_token or "", float(mine.logprob), alts)


def _completion(out) -> Completion:
    reason = "length" if out.finish_reason == "length" else "stop"
    return Completion(out.text, list(out.token_ids), reason)
