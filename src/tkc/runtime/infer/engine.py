"""The inference engine interface: Completion, the Engine protocol, prompts and stops; engines import it.

Implementations (`hf.HFEngine`, `vllm_engine.VLLMEngine`) import this module, never the reverse;
`tkc.runtime.infer.factory.load_engine` picks one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.context import RunContext

# A prompt is raw text (sent as is) or a chat conversation (rendered with the bundle's template).
Prompt = str | list[dict]


@dataclass(frozen=True)
class Completion:
    text: str  # the reply, cut before the first stop string; special tokens skipped
    tokens: list[int]  # generated ids, up to (not including) the stop token
    finish_reason: str  # "stop" (a stop token or string) | "length" (max_new_tokens reached)


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


def chat_template(ctx: RunContext) -> ChatTemplate | None:
    """The bundle's chat template as the data pipeline renders it, or None for a bundle without one (pt only)."""
    text = ctx.chat_template()
    if text is None:
        return None
    return ChatTemplate.from_plan(ctx.plan.template, text, tokenizer_eos=ctx.tokenizer().eos_token or "")


def render_prompt(fmt: ChatTemplate | None, prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
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
