"""BatchingEngine: dynamic batching over HFEngine's model: one scheduler thread, a shared KV cache, per-row stops.

Requests wait in a bounded queue; at each decode-step boundary the scheduler admits as many as fit the free slots
(one slot per choice), prefills each alone (its prompt unpadded, as generate() sees it), and appends its KV rows
to the running batch, left-padded with an attention mask and per-row positions. Each step decodes one token for
every row; a row that stops (stop token, stop string, length, cancel) leaves the batch at once and its slot is
free for the next step. Why not transformers 5.23's continuous batching (generate_batch, ContinuousBatchingManager):
on CPU it gave generate()'s greedy tokens on the tiny Qwen2 but took 56 s for three 12-token requests (its paged
cache set-up; ours: well under a second), it seeds one global generator (distributed.set_tp_seed), has no stop
strings and returns logprobs for all requests or none; here a request's samples must not depend on its batch
mates, so each choice has its own generator.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from inspect import signature
from typing import Any

import torch

from tkc.runtime.context import RunContext
from tkc.runtime.infer.engine import (
    Completion,
    Delta,
    EngineBusy,
    Handle,
    MediaIds,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenIds,
    TokenLogprob,
    Usage,
    cut_at_stop,
    held_back,
    render_prompt,
    stream_text,
)
from tkc.runtime.infer.hf import HFEngine
from tkc.runtime.infer.media import MediaEncoder, decode_positions, encode_media, prefill_inputs, runs_alone
from tkc.runtime.infer.sampling import left_pad, row_generator, sample


@dataclass
class _Request:
    handle: Handle
    ids: list[int]
    params: SamplingParams
    stop_ids: set[int]
    strings: list[str]
    media: MediaIds | None = None  # images: prefilled with them, decoded alone (infer/media.py)


@dataclass
class _Row:
    """One choice of one request in the running batch."""

    req: _Request
    index: int
    generator: torch.Generator | None
    length: int  # real (unpadded) tokens in the cache
    last: int = 0  # the token to feed at the next step
    done: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the decoded reply, cut at a stop string
    emitted: int = 0  # characters of it handed on
    stable: str = ""  # decode(tokens[:read]), built incrementally (_decoded)
    prefix: int = 0  # tokens[prefix:read] decoded again each step, as context for the next ones
    read: int = 0


class BatchingEngine:
    """Engine with concurrent, batched requests (submit) over an HFEngine's model, tokenizer and template."""

    def __init__(self, hf: HFEngine, *, max_batch: int = 16, max_waiting: int = 256):
        self.hf, self.model, self.tok, self.fmt = hf, hf.model, hf.tok, hf.fmt
        self.max_batch, self.max_waiting = max(1, max_batch), max_waiting
        self._cv = threading.Condition()
        self._tok_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once
        self._waiting: deque[_Request] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._serial = False  # a cache whose rows cannot be merged: one request at a time (see _check_cache)
        self.media: MediaEncoder | None = None  # a multimodal bundle's image encoding (from_bundle sets it)
        # logits for the last position only (a prompt's vocabulary projection is most of a prefill's work)
        self._last_only = (
            {"logits_to_keep": 1} if "logits_to_keep" in signature(self.model.forward).parameters else {}
        )
        self._stats = {"steps": 0, "rows_decoded": 0, "max_batch_seen": 0, "requests": 0}

    @classmethod
    def from_bundle(cls, ctx: RunContext, stage_name: str | None, *, max_waiting: int = 256, **options: Any):
        """HFEngine.from_bundle's model (options: dtype, device, batch_size = the batch slots)."""
        hf = HFEngine.from_bundle(ctx, stage_name, **options)
        engine = cls(hf, max_batch=hf.batch_size, max_waiting=max_waiting)
        engine.media = MediaEncoder.from_context(ctx, hf.model, engine._tok_lock)
        return engine

    def stops(self, extra: Sequence[str]) -> tuple[set[int], list[str]]:
        with self._tok_lock:
            return self.hf.stops(extra)

    def encode(self, prompt: Prompt) -> list[int]:
        if (media := encode_media(self.media, prompt, self.render)) is not None:
            return list(media.ids)
        if isinstance(prompt, TokenIds):
            if not prompt.ids:
                raise ValueError("an empty prompt: nothing to continue from")
            return list(prompt.ids)
        with self._tok_lock:
            return self.hf.encode(prompt)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, TokenIds | MediaIds):
            with self._tok_lock:
                return self.tok.decode(list(prompt.ids))
        return render_prompt(self.fmt, prompt)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt))

    def max_context(self) -> int:
        config = self.model.config.get_text_config()
        return int(getattr(config, "max_position_embeddings", None) or self.tok.model_max_length)

    def stats(self) -> dict[str, int]:
        """steps (decode steps), rows_decoded (sum of batch sizes), max_batch_seen, requests (admitted)."""
        with self._cv:
            return dict(self._stats)

    def submit(self, prompt: Prompt, params: SamplingParams, *, bounded: bool = True) -> Handle:
        """Queue a request (thread-safe). Raises ValueError, PromptTooLong, EngineBusy before any model work."""
        media = encode_media(self.media, prompt, self.render)
        ids = list(media.ids) if media is not None else self.encode(prompt)
        if len(ids) + params.max_new_tokens > self.max_context():
            raise PromptTooLong(len(ids), params.max_new_tokens, self.max_context())
        if params.n > self.max_batch:
            raise ValueError(f"n={params.n} is more than the engine's {self.max_batch} batch slots")
        stop_ids, strings = self.stops(params.stop)
        stop_ids |= set(params.stop_token_ids)
        handle = Handle(params.n, len(ids), params.logprobs)
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if bounded and len(self._waiting) >= self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} requests are waiting (the limit); try again later")
            self._waiting.append(_Request(handle, ids, params, stop_ids, strings, media))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tkc-batching", daemon=True)
                self._thread.start()
            self._cv.notify()
        return handle

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
        """One completion per prompt, all submitted at once (batched as slots allow); each seeded with `seed`."""
        params = SamplingParams(max_new_tokens, temperature, top_p, tuple(stop), seed)
        handles: list[Handle] = []
        try:  # a refused prompt cancels those already submitted
            handles += (self.submit(p, params, bounded=False) for p in prompts)
            return [h.result()[0] for h in handles]
        finally:
            for h in handles:
                h.cancel()

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
        """Text deltas of generate([prompt])[0].text; a reader that stops early cancels the request."""
        return stream_text(self, prompt, SamplingParams(max_new_tokens, temperature, top_p, tuple(stop), seed))

    def close(self) -> None:
        """Stop the scheduler; waiting and running requests finish as "cancelled"."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        with torch.inference_mode():
            self._check_cache()
            while True:
                with self._cv:
                    while not self._waiting and not self._rows and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        break
                    admitted = self._admit()
                try:
                    self._step(admitted)
                except Exception as e:  # a failed forward fails the requests in it; the engine goes on
                    for h in {id(r.req.handle): r.req.handle for r in self._rows}.values():
                        h.fail(e)
                    for req in admitted:
                        req.handle.fail(e)
                    self._rows, self._cache, self._mask = [], None, None
        for r in self._rows:
            if not r.done:
                self._finish(r, "cancelled")
        for req in self._waiting:
            self._cancel_waiting(req)

    def _check_cache(self) -> None:
        """Rows are merged and dropped in plain per-layer key/value tensors (DynamicLayer); any other cache
        (sliding window, linear attention) runs one request at a time, still through this scheduler."""
        from transformers.cache_utils import DynamicLayer

        try:
            probe = torch.tensor([[0]], device=self.hf.device)
            cache = self.model(input_ids=probe, use_cache=True).past_key_values
            self._serial = not all(type(layer) is DynamicLayer for layer in cache.layers)
        except Exception:
            self._serial = True

    def _admit(self) -> list[_Request]:
        """Waiting requests (first come, first served) that fit the free slots; cancelled ones finish here."""
        out: list[_Request] = []
        free = self.max_batch - len(self._rows)
        while self._waiting:
            req = self._waiting[0]
            if req.handle.cancelled:
                self._cancel_waiting(self._waiting.popleft())
                continue
            alone = self._serial or runs_alone(req.media, [*(r.req for r in self._rows), *out])
            if req.params.n > free or (alone and (self._rows or out)):
                break
            out.append(self._waiting.popleft())
            free -= req.params.n
        self._stats["requests"] += len(out)
        return out

    def _cancel_waiting(self, req: _Request) -> None:
        for i in range(req.params.n):
            req.handle.put(Delta(i, "", finish_reason="cancelled", usage=Usage(len(req.ids), 0)))

    def _step(self, admitted: list[_Request]) -> None:
        for req in admitted:
            try:
                self._prefill(req)
            except Exception as e:  # this prompt failed (out of memory, say): the running batch goes on
                req.handle.fail(e)
                for r in self._rows:
                    r.done = r.done or r.req is req
        for r in [r for r in self._rows if r.req.handle.cancelled and not r.done]:
            self._finish(r, "cancelled")
        self._drop_finished()
        if self._rows:
            self._decode()
            self._drop_finished()

    def _prefill(self, req: _Request) -> None:
        """Run the prompt alone, repeat its KV for n choices, append the rows; pick each choice's first token."""
        ids = torch.tensor([req.ids], device=self.hf.device)
        media = prefill_inputs(req.media, self.model)
        out = self.model(input_ids=ids, use_cache=True, **self._last_only, **media)
        cache, n = out.past_key_values, req.params.n
        if n > 1:
            cache.batch_repeat_interleave(n)
        device = self.hf.device
        rows = [_Row(req, i, row_generator(req.params, i, device), len(req.ids)) for i in range(n)]
        self._merge(cache, torch.ones(n, len(req.ids), dtype=torch.long, device=device), rows)
        self._advance(rows, out.logits[:, -1, :].float().expand(n, -1))

    def _decode(self) -> None:
        device = self.hf.device
        assert self._mask is not None
        inp = torch.tensor([[r.last] for r in self._rows], device=device)
        pos = torch.tensor([[r.length] for r in self._rows], device=device)
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=torch.long, device=device)], dim=1)
        kw = decode_positions(self._rows, mask, pos)  # none with media: the model's own positions
        out = self.model(input_ids=inp, past_key_values=self._cache, use_cache=True, **kw, **self._last_only)
        self._cache, self._mask = out.past_key_values, mask
        for r in self._rows:
            r.length += 1
        with self._cv:
            self._stats["steps"] += 1
            self._stats["rows_decoded"] += len(self._rows)
            self._stats["max_batch_seen"] = max(self._stats["max_batch_seen"], len(self._rows))
        self._advance(self._rows, out.logits[:, -1, :].float())

    def _merge(self, cache: Any, mask: torch.Tensor, rows: list[_Row]) -> None:
        """Append `cache`'s rows to the batch cache, left-padding the shorter side (keys, values and mask)."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask, self._rows = cache, mask, list(rows)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, width, 2), left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([left_pad(mine.values, width, 2), left_pad(theirs.values, width, 2)])
        self._mask = torch.cat([left_pad(self._mask, width, 1), left_pad(mask, width, 1)])
        self._rows += rows

    def _drop_finished(self) -> None:
        """Remove finished rows from the batch (cache rows, mask) and the padding columns no row needs."""
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows) or (self._serial and keep):
            return  # a cache that cannot drop rows keeps decoding its finished rows (their output ignored)
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        assert self._mask is not None
        index = torch.tensor(keep, device=self._mask.device)
        self._rows = [self._rows[i] for i in keep]
        mask = self._mask[index]
        first = int(mask.any(0).nonzero()[0])
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token and hand its Delta to the handle."""
        want = any(r.req.params.logprobs for r in rows)
        logp = torch.log_softmax(logits, dim=-1) if want else None
        greedy = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(rows):
            if r.done:
                continue
            p = r.req.params
            token = greedy[i] if p.temperature == 0 else sample(logits[i], p, r.generator)
            lp = self._logprob(logp[i], token, p.top_logprobs) if logp is not None and p.logprobs else None
            self._take(r, token, lp)

    def _logprob(self, logp: torch.Tensor, token: int, top: int) -> TokenLogprob:
        alts: tuple[tuple[int, str, float], ...] = ()
        if top:
            values, ids = logp.topk(top)
            with self._tok_lock:
                alts = tuple(
                    (t, self.tok.decode([t]), v) for t, v in zip(ids.tolist(), values.tolist(), strict=True)
                )
        with self._tok_lock:
            text = self.tok.decode([token])
        return TokenLogprob(token, text, float(logp[token]), alts)

    def _take(self, r: _Row, token: int, lp: TokenLogprob | None) -> None:
        """Record `token` for row `r`: stop by id, by string or by length, else emit the text that is safe."""
        req = r.req
        r.last = token
        if token in req.stop_ids:
            self._finish(r, "stop")
            return
        r.tokens.append(token)
        r.text, hit = cut_at_stop(self._decoded(r), req.strings)
        logprobs = (lp,) if lp is not None else None
        if hit or len(r.tokens) >= req.params.max_new_tokens:
            self._finish(r, "stop" if hit else "length", (token,), logprobs)
            return
        # an incomplete UTF-8 character decodes as U+FFFD until its last byte arrives
        safe = min(len(r.text.rstrip("\ufffd")), len(r.text) - held_back(r.text, req.strings))
        text = r.text[r.emitted : safe] if safe > r.emitted else ""
        r.emitted = max(r.emitted, safe)
        req.handle.put(Delta(r.index, text, (token,), logprobs))

    def _decoded(self, r: _Row) -> str:
        """decode(r.tokens) without decoding them all each step: only the tokens since the last complete
        character, with the chunk before them as context (a tokenizer may drop a leading space at the start)."""
        with self._tok_lock:
            head = self.tok.decode(r.tokens[r.prefix : r.read], skip_special_tokens=True)
            whole = self.tok.decode(r.tokens[r.prefix :], skip_special_tokens=True)
            if not whole.startswith(head):  # the context changed its own text: decode everything once
                r.stable = self.tok.decode(r.tokens, skip_special_tokens=True)
                r.prefix, r.read = 0, len(r.tokens)
                return r.stable
        new = whole[len(head) :]
        # nothing yet, or an incomplete UTF-8 character: keep the context
        if not new or new.endswith("\ufffd"):
            return r.stable + new
        r.stable, r.prefix, r.read = r.stable + new, r.read, len(r.tokens)
        return r.stable

    def _finish(self, r: _Row, reason: str, ids: tuple[int, ...] = (), logprobs=None) -> None:
        usage = Usage(len(r.req.ids), len(r.tokens))
        r.req.handle.put(Delta(r.index, r.text[r.emitted :], ids, logprobs, reason, usage))
        r.emitted, r.done = len(r.text), True
