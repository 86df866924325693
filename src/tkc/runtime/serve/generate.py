"""/v1/chat/completions and /v1/completions: checks before model work, then the engine's Handle, whole or as SSE.

A request is admitted (bounded, else 429) only after every check that needs no model has passed. A streamed
request whose client goes away is cancelled (the engine frees its batch slot at its next step) and leaves the
admission count; a whole (non-streamed) one is cancelled too when the client disconnects while it waits.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tkc.bundle.chat import TemplateRefused
from tkc.runtime.infer.engine import EngineBusy, PromptTooLong, SamplingParams
from tkc.runtime.serve.backend import Backend, Deltas
from tkc.runtime.serve.images import encode_request, request_media
from tkc.runtime.serve.protocol import TEXT_ONLY, ApiError, ChatRequest, CompletionRequest, Message
from tkc.runtime.serve.tools import may_be_call, parse_calls


def message_dict(m: Message, placeholder: str | None = None, audio: str | None = None) -> dict[str, Any]:
    """A request message in the canonical shape the data pipeline renders (tool arguments as objects); an image
    (audio) part becomes `placeholder` (`audio`: a multimodal bundle's `<image>`, `<audio>`), refused without one."""
    if (placeholder is None and m.image_urls()) or (audio is None and m.audio_parts()):
        raise ApiError(400, TEXT_ONLY, param="messages", code="unsupported")
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                           "content": m.text(placeholder or "", audio or "")}
    if m.tool_calls:
        out["tool_calls"] = [{"type": "function", "function": {"name": c.function.name,
                                                               "arguments": _arguments(c.function.arguments)}}
                             for c in m.tool_calls]
    if m.name is not None:
        out["name"] = m.name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _arguments(raw: str | dict) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        raise ApiError(400, "tool_calls[].function.arguments is not a JSON object", param="messages",
                       code="invalid_value") from None
    if not isinstance(value, dict):
        raise ApiError(400, "tool_calls[].function.arguments must encode a JSON object", param="messages",
                       code="invalid_value")
    return value


def sampling(backend: Backend, limits: Any, req: ChatRequest | CompletionRequest, prompt_tokens: int,
             max_tokens: int | None, top_logprobs: int | None) -> SamplingParams:
    """The request's sampling parameters, every limit checked (400 naming the field) before any model work."""
    if req.n > limits.max_n:
        raise ApiError(400, f"n is {req.n}; this server allows at most {limits.max_n}", param="n", code="too_many")
    stops = req.stops()
    if len(stops) > limits.max_stop or any(not s or len(s) > limits.max_stop_chars for s in stops):
        raise ApiError(400, f"stop: at most {limits.max_stop} non-empty strings of at most "
                            f"{limits.max_stop_chars} characters", param="stop", code="invalid_value")
    room = backend.context - prompt_tokens
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                       param="max_tokens", code="too_many")
    wanted = max_tokens or backend.defaults.max_tokens or min(limits.max_tokens, room)
    if prompt_tokens + wanted > backend.context or room < 1:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens and max_tokens is {wanted}: {prompt_tokens} + "
                            f"{wanted} = {prompt_tokens + wanted}, over the model's context of {backend.context} "
                            f"tokens", param="messages" if isinstance(req, ChatRequest) else "prompt",
                       code="context_length_exceeded")
    d = backend.defaults
    return SamplingParams(
        max_new_tokens=wanted, temperature=d.temperature if req.temperature is None else req.temperature,
        top_p=d.top_p if req.top_p is None else req.top_p, stop=tuple(stops),
        seed=d.seed if req.seed is None else req.seed, n=req.n, logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs or 0)


def add_routes(app: FastAPI, backend: Backend, limits: Any) -> None:
    from tkc.runtime.serve.app import check_model

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        check_model(backend, req.model, "generate")
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools and req.tool_choice != "none" else None
        if tools and backend.tool_format is None:
            raise ApiError(400, "tools: this bundle's chat template writes no tool calls tkc can read",
                           param="tools", code="unsupported")
        images, audios = await request_media(backend, req.messages)  # media parts read, or refused (images.py)
        try:
            prompt: Any = backend.render_chat([message_dict(m, backend.placeholder, backend.audio_placeholder)
                                               for m in req.messages], tools)
        except (TemplateRefused, ValueError) as e:
            raise ApiError(400, f"messages: the bundle's chat template refused this conversation: {e}",
                           param="messages", code="template_refused") from None
        if images or audios:
            prompt = await encode_request(backend, prompt, images, audios)
        top = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling(backend, limits, req, backend.count_tokens(prompt), req.max_completion_tokens
                          or req.max_tokens, top)
        run = _Run(app, backend, "chat", bool(tools), bool(req.stream_options and req.stream_options.include_usage))
        return await run.respond(request, [prompt], params, req.stream)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        check_model(backend, req.model, "generate")
        prompts = req.prompts()
        if len(prompts) * req.n > limits.max_n:
            raise ApiError(400, f"{len(prompts)} prompts x n={req.n} choices is over this server's limit of "
                                f"{limits.max_n}", param="prompt", code="too_many")
        if any(not p for p in prompts):
            raise ApiError(400, "prompt: an empty prompt has nothing to continue", param="prompt",
                           code="invalid_value")
        params = sampling(backend, limits, req, max(map(backend.count_tokens, prompts)), req.max_tokens,
                          req.logprobs)
        run = _Run(app, backend, "text", False, bool(req.stream_options and req.stream_options.include_usage))
        return await run.respond(request, prompts, params, req.stream)


class _Run:
    """One admitted request: its handles (one per prompt), their Deltas, and the response built from them."""

    def __init__(self, app: FastAPI, backend: Backend, kind: str, tools: bool, include_usage: bool):
        self.app, self.backend, self.kind, self.tools, self.include_usage = app, backend, kind, tools, include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    async def respond(self, request: Request, prompts: list[str], params: SamplingParams, stream: bool) -> Any:
        admission = self.app.state.admission
        admission.enter()
        try:
            streams = [Deltas(self.backend.submit(p, params)) for p in prompts]
        except EngineBusy as e:
            admission.leave()
            raise ApiError(429, str(e), code="rate_limit_exceeded", kind="rate_limit_error",
                           headers={"Retry-After": str(self.app.state.limits.retry_after_s)}) from None
        except PromptTooLong as e:
            admission.leave()
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        except BaseException:
            admission.leave()
            raise
        if stream:
            return StreamingResponse(self._sse(streams, params.n, admission), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return JSONResponse(await self._whole(request, streams, params.n))
        finally:
            for s in streams:
                s.cancel()
            admission.leave()

    async def _whole(self, request: Request, streams: list[Deltas], n: int) -> dict:
        import asyncio

        choices, usage = [], [0, 0]
        for p, s in enumerate(streams):
            acc: dict[int, dict] = {}
            task = asyncio.ensure_future(_collect(s, acc))
            while not task.done():
                await asyncio.wait([task], timeout=0.5)
                if not task.done() and await request.is_disconnected():
                    s.cancel()
            task.result()
            usage[0] += s.handle.prompt_tokens
            for i in range(n):
                c = acc.get(i, _empty())
                usage[1] += c["tokens"]
                choices.append(self._choice(p * n + i, c))
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.backend.model_id,
                "choices": choices, "usage": _usage(*usage)}

    def _choice(self, index: int, c: dict) -> dict:
        text, finish = "".join(c["text"]), _finish(c["finish"])
        if self.kind == "text":
            return {"index": index, "text": text, "finish_reason": finish,
                    "logprobs": _text_logprobs(c["logprobs"]) if c["logprobs"] is not None else None}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.tools and self.backend.tool_format is not None:
            content, calls = parse_calls(text, self.backend.tool_format)
            if calls:
                message, finish = {"role": "assistant", "content": content or None, "tool_calls": calls}, "tool_calls"
        return {"index": index, "message": message, "finish_reason": finish,
                "logprobs": {"content": [_chat_logprob(t) for t in c["logprobs"]]} if c["logprobs"] is not None
                else None}

    async def _sse(self, streams: list[Deltas], n: int, admission: Any) -> AsyncIterator[str]:
        usage = [0, 0]
        try:
            for p, s in enumerate(streams):
                held: dict[int, list[str]] = {}
                async for d in s:
                    index = p * n + d.index
                    if d.index not in held:
                        held[d.index] = []
                        if self.kind == "chat":
                            yield self._chunk(index, {"role": "assistant", "content": ""}, None)
                    for chunk in self._delta_chunks(index, d, held[d.index]):
                        yield chunk
                    if d.usage is not None:
                        usage[1] += d.usage.completion_tokens
                usage[0] += s.handle.prompt_tokens
            if self.include_usage:
                yield _data({**self._head(), "choices": [], "usage": _usage(*usage)})
            yield "data: [DONE]\n\n"
        except Exception as e:  # the engine failed mid-stream: the client gets an error event, not a cut
            yield _data({"error": {"message": f"generation failed: {type(e).__name__}", "type": "server_error",
                                   "param": None, "code": "internal_error"}})
        finally:  # also when the client went away (the task is cancelled): free the batch slots
            for s in streams:
                s.cancel()
            admission.leave()

    def _delta_chunks(self, index: int, d: Any, held: list[str]) -> list[str]:
        """The chunks for one Delta; with tools, text that may be a tool call is held until the choice ends."""
        text, out = d.text, []
        lp = [_chat_logprob(t) for t in d.logprobs] if d.logprobs is not None else None
        if self.kind == "text":
            logprobs = _text_logprobs(list(d.logprobs)) if d.logprobs is not None else None
            if text or d.finish_reason:
                out.append(self._chunk(index, text, _finish(d.finish_reason), logprobs))
            return out
        tf = self.backend.tool_format if self.tools else None
        if tf is not None:
            held.append(text)
            joined = "".join(held)
            cut = len(joined) if d.finish_reason else may_be_call(joined, tf)
            text, rest = joined[:cut], joined[cut:]
            held[:] = [rest] if rest else []
            if d.finish_reason:
                content, calls = parse_calls(joined, tf)
                if calls:
                    out.append(self._chunk(index, {"content": content or None, "tool_calls": [
                        {**c, "index": k} for k, c in enumerate(calls)]}, None))
                    return [*out, self._chunk(index, {}, "tool_calls")]
        if text or lp:
            out.append(self._chunk(index, {"content": text}, None, {"content": lp} if lp is not None else None))
        if d.finish_reason:
            out.append(self._chunk(index, {}, _finish(d.finish_reason)))
        return out

    def _head(self) -> dict:
        return {"id": self.id, "object": self.object + ("" if self.kind == "text" else ".chunk"),
                "created": self.created, "model": self.backend.model_id}

    def _chunk(self, index: int, delta: Any, finish: str | None, logprobs: Any = None) -> str:
        key = "text" if self.kind == "text" else "delta"
        choice = {"index": index, key: delta, "finish_reason": finish, "logprobs": logprobs}
        body = {**self._head(), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return _data(body)


async def _collect(s: Deltas, acc: dict[int, dict]) -> None:
    async for d in s:
        c = acc.setdefault(d.index, _empty())
        c["text"].append(d.text)
        if d.logprobs is not None:
            c["logprobs"] = (c["logprobs"] or []) + list(d.logprobs)
        if d.finish_reason:
            c["finish"] = d.finish_reason
            c["tokens"] = d.usage.completion_tokens if d.usage else 0


def _empty() -> dict:
    return {"text": [], "logprobs": None, "finish": None, "tokens": 0}


def _finish(reason: str | None) -> str | None:
    return "stop" if reason == "cancelled" else reason


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chat_logprob(t: Any) -> dict:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
            "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode())} for _, s, lp in t.top]}


def _text_logprobs(items: list) -> dict:
    offsets, at = [], 0
    for t in items:
        offsets.append(at)
        at += len(t.token)
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{s: lp for _, s, lp in t.top} for t in items], "text_offset": offsets}
