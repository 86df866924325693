"""The inference engine interface: prompts, sampling parameters, concurrent requests (Handle, Delta); engines import it.

Implementations (`batching.BatchingEngine` over `hf.HFEngine`'s model, `vllm_engine.VLLMEngine`) import this
module, never the reverse; `tkc.runtime.infer.factory.load_engine` picks one.

The concurrent interface (what `tkc serve`, `tkc chat`, the infer and eval stages use):

    engine.submit(prompt, SamplingParams(max_new_tokens=64, stop=("\n",), n=2, logprobs=True)) -> Handle
        thread-safe; returns at once (the request waits for a batch slot). Raises before any model work:
        ValueError (empty prompt), PromptTooLong (prompt + max_new_tokens over max_context(); has the numbers),
        EngineBusy (the engine's bounded waiting queue is full: answer 429).
    for delta in handle: ...   Delta(index, text, token_ids, logprobs, finish_reason, usage), in order per choice;
        each choice (index 0..n-1) ends with one Delta whose finish_reason is "stop" | "length" | "cancelled"
        and whose usage is Usage(prompt_tokens, completion_tokens of that choice). Iteration ends after the last
        choice's final Delta; an engine failure is re-raised to the reader.
    handle.cancel()            frees the request's batch slot(s) at the next decode step; idempotent.
    handle.result(timeout)     blocks; [Completion] in choice order (iterating first is optional).
    handle.usage()             Usage summed over choices (prompt_tokens counted once), once finished.
    with engine.submit(...) as handle: ...   cancels on exit unless finished (a client that went away).
    engine.render(prompt) -> str   the exact prompt text the bundle's template renders (what training saw).
    engine.count_tokens(prompt)    prompt tokens; engine.max_context() the model's positions.
    engine.close()                 stops the scheduler (pending requests finish as "cancelled").
    BatchingEngine also has stats() (decode steps, rows decoded, largest batch seen, requests admitted) and
    submit(..., bounded=False) (no EngineBusy: the infer and eval stages queue all their prompts at once).

Prompts: raw text (sent as is), a chat conversation (list of messages, rendered with the bundle's template), or
TokenIds (ids sent as is); with images, a MediaPrompt (BatchingEngine over a multimodal bundle only: its
placeholders expanded and its images encoded by the model's processor, infer/media.py; such a request decodes alone,
its positions the model's own). Greedy (temperature 0) output is the same token for token whatever a request is
batched with; sampling uses one torch.Generator per choice seeded from (seed, choice index), so it too does not
depend on batch mates. Logprobs are the model's own log-softmax (before temperature / top_p).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.context import RunContext

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class TokenIds:
    """A prompt given as token ids, sent to the model as is (no template, no special tokens added)."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class MediaPrompt:
    """Text or a conversation whose media placeholders (`<image>`, `<audio>`, as datasets write them) stand for
    `images` (RGB PIL images) and `audios`, in order; a multimodal bundle's BatchingEngine expands and encodes it
    (infer/media.py)."""

    prompt: str | list[dict]
    images: tuple[Any, ...] = ()
    audios: tuple[tuple[Any, int], ...] = ()  # (mono samples, rate) per `<audio>` placeholder


@dataclass(frozen=True)
class MediaIds:
    """A MediaPrompt encoded: the expanded token ids and the model's media inputs (pixel_values, ...), sent as is."""

    ids: tuple[int, ...]
    inputs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


# A prompt is raw text (sent as is), a chat conversation (rendered with the bundle's template), token ids, or
# either of the first two with images (MediaPrompt, or MediaIds once encoded).
Prompt = str | list[dict] | TokenIds | MediaPrompt | MediaIds


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # extra stop strings (the template's stop tokens and eos always stop)
    seed: int = 0  # choice i samples with torch.Generator seeded (seed + i)
    n: int = 1  # choices per prompt
    logprobs: bool = False  # per generated token: its logprob (and top_logprobs alternatives)
    top_logprobs: int = 0
    stop_token_ids: tuple[int, ...] = ()  # extra token ids to stop at (not included in the output)

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.n < 1 or self.top_logprobs < 0:
            raise ValueError("max_new_tokens and n must be >= 1, top_logprobs >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str  # the token's own text (decoded alone)
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob) of the most likely tokens, best first


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Completion:
    text: str  # the reply, cut before the first stop string; special tokens skipped
    tokens: list[int]  # generated ids, up to (not including) the stop token
    finish_reason: str  # "stop" (a stop token or string) | "length" (max_new_tokens reached) | "cancelled"
    logprobs: list[TokenLogprob] | None = None  # one per token when asked for
    index: int = 0  # choice index (n > 1)
    prompt_tokens: int = 0


@dataclass(frozen=True)
class Delta:
    index: int  # choice index, 0..n-1
    text: str  # new text since this choice's previous Delta (may be empty)
    token_ids: tuple[int, ...] = ()  # new generated ids (stop token excluded)
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token_ids entry, when asked for
    finish_reason: str | None = None  # set on the choice's final Delta only
    usage: Usage | None = None  # set on the choice's final Delta only


class PromptTooLong(ValueError):
    """The prompt plus max_new_tokens does not fit the model's positions."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, max_context: int):
        self.prompt_tokens, self.max_new_tokens, self.max_context = prompt_tokens, max_new_tokens, max_context
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; with max_new_tokens {max_new_tokens} that is "
            f"{prompt_tokens + max_new_tokens}, over the model's context of {max_context} tokens"
        )


class EngineBusy(RuntimeError):
    """The engine's bounded waiting queue is full; try again later."""


_END = object()


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class Handle:
    """One submitted request: its Deltas as they arrive, cancel(), result(). Engines feed it with put()/fail().

    Thread-safe: the engine's scheduler thread calls put()/fail(); any one reader iterates; cancel() and
    result() may be called from any thread.
    """

    def __init__(self, n: int, prompt_tokens: int, want_logprobs: bool = False):
        self.n, self.prompt_tokens, self.want_logprobs = n, prompt_tokens, want_logprobs
        self._q: queue.Queue = queue.Queue()
        self._choices = [_Choice() for _ in range(n)]
        self._open = n
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._error: BaseException | None = None

    # the engine's side
    def put(self, delta: Delta) -> None:
        """Record and hand on one Delta; the last choice's final Delta finishes the handle."""
        c = self._choices[delta.index]
        if c.finish_reason is not None:
            return
        c.text.append(delta.text)
        c.tokens += delta.token_ids
        c.logprobs += delta.logprobs or ()
        self._q.put(delta)
        if delta.finish_reason is not None:
            c.finish_reason = delta.finish_reason
            self._open -= 1
            if self._open == 0:
                self._q.put(_END)
                self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._q.put(error)
            self._q.put(_END)
            self._done.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # the caller's side
    def cancel(self) -> None:
        """Ask the engine to drop the request at its next decode step (its choices finish as "cancelled")."""
        self._cancel.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __iter__(self) -> Iterator[Delta]:
        while (item := self._q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def result(self, timeout: float | None = None) -> list[Completion]:
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return [
            Completion(
                "".join(c.text),
                list(c.tokens),
                c.finish_reason or "cancelled",
                list(c.logprobs) if self.want_logprobs else None,
                i,
                self.prompt_tokens,
            )
            for i, c in enumerate(self._choices)
        ]

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, sum(len(c.tokens) for c in self._choices))

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        if not self.done:
            self.cancel()



def stream_text(engine: Any, prompt: Prompt, params: SamplingParams) -> Iterator[str]:
    """Text deltas of one request through `engine.submit` (every engine's stream()); a reader that stops early
    cancels the request (the handle's context manager)."""
    with engine.submit(prompt, params) as handle:
        for delta in handle:
            if delta.text:
                yield delta.text

@runtime_checkable
class Engine(Protocol):
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
        """One completion per prompt; greedy when temperature == 0, else seeded sampling."""
        ...

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
        """The completion of one prompt as text deltas; their concatenation equals generate()'s text."""
        ...

    def submit(self, prompt: Prompt, params: SamplingParams) -> Handle:
        """Queue one request (thread-safe); see the module docstring."""
        ...

    def render(self, prompt: Prompt) -> str:
        """The exact prompt text the model continues (the bundle's template applied to a conversation)."""
        ...

    def count_tokens(self, prompt: Prompt) -> int: ...

    def max_context(self) -> int:
        """The model's positions: prompt plus generated tokens must fit."""
        ...

    def close(self) -> None: ...


def chat_template(ctx: RunContext) -> ChatTemplate | None:
    """The bundle's chat template as the data pipeline renders it, or None for a bundle without one (pt only)."""
    text = ctx.chat_template()
    if text is None:
        return None
    return ChatTemplate.from_plan(ctx.plan.template, text, tokenizer_eos=ctx.tokenizer().eos_token or "")


def render_prompt(fmt: ChatTemplate | None, prompt: Prompt) -> str:
    if isinstance(prompt, MediaPrompt):
        prompt = prompt.prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, TokenIds | MediaIds):
        raise TypeError("a TokenIds prompt has no text to render; the engine decodes it")
    if fmt is None:
        raise ValueError(
            "this bundle has no chat template (resolved.json template is null); pass text prompts"
        )
    return fmt.prompt(prompt)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` before the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still begin a stop string (a stream must not emit them yet)."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def split_stops(tokenizer, fmt: ChatTemplate | None, extra: Sequence[str] = ()) -> tuple[set[int], list[str]]:
    """(ids, strings) of the template's stop tokens (the plan's, `ChatTemplate.stop_tokens`), the tokenizer's eos
    (always a stop) and the caller's `extra` stops: a stop that is one special/added token is stopped on by id
    (decoding skips special tokens, so it never shows in the text); any other is matched in the decoded text."""
    ids = {tokenizer.eos_token_id} - {None}
    added = tokenizer.get_added_vocab()
    strings: list[str] = []
    for s in [*(fmt.stop_tokens if fmt is not None else ()), *extra]:
        if s in tokenizer.all_special_tokens or s in added:
            ids.add(tokenizer.convert_tokens_to_ids(s))
        else:
            strings.append(s)
    return ids, strings
