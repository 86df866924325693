"""Built-in reward functions for the grpo stage (`reward_function: <id>` in a recipe).

Pure Python (no torch import), so the list of ids can be read without the ML stack. Each id names a factory
`make(max_new_tokens, stop_ids) -> fn`; `fn` has TRL's reward-function signature
`fn(prompts, completions, completion_ids, **columns) -> list[float]` (one float per completion), where
`completions` are decoded with special tokens skipped and `completion_ids` end with the stop token when the
model emitted one. `columns` holds the grpo stage's per-prompt columns, repeated per generation; the one a
built-in reads is `reference` (the dataset's answer, decoded exactly as the eval stage decodes it).

  exact_match     1.0 when the stripped completion equals the stripped reference answer, else 0.0
                  (the same comparison as the eval stage's exact_match metric).
  format          1.0 when the completion ended with a stop token (not cut at max_new_tokens) and is
                  non-empty text, else 0.0.
  length_penalty  -(generated tokens, stop token excluded) / max_new_tokens, in [-1, 0]: shorter is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tkc.bundle.kinds import REWARD_FUNCTIONS

RewardFn = Callable[..., list[float]]


def _texts(completions: Sequence) -> list[str]:
    """Completion text; TRL passes strings for text prompts and [{"role", "content"}] for chat prompts."""
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def exact_match(max_new_tokens: int, stop_ids: Sequence[int]) -> RewardFn:
    def exact_match(prompts, completions, completion_ids, reference, **_) -> list[float]:
        return [1.0 if c.strip() == r.strip() else 0.0 for c, r in zip(_texts(completions), reference, strict=True)]

    return exact_match


def format_ok(max_new_tokens: int, stop_ids: Sequence[int]) -> RewardFn:
    stops = set(stop_ids)

    def format(prompts, completions, completion_ids, **_) -> list[float]:  # noqa: A001 - the reward's id
        return [1.0 if ids and ids[-1] in stops and text.strip() else 0.0
                for ids, text in zip(completion_ids, _texts(completions), strict=True)]

    return format


def length_penalty(max_new_tokens: int, stop_ids: Sequence[int]) -> RewardFn:
    stops = set(stop_ids)

    def length_penalty(prompts, completions, completion_ids, **_) -> list[float]:
        return [-(len(ids) - (1 if ids and ids[-1] in stops else 0)) / max_new_tokens for ids in completion_ids]

    return length_penalty


BUILTINS: dict[str, Callable[[int, Sequence[int]], RewardFn]] = {
    "exact_match": exact_match,
    "format": format_ok,
    "length_penalty": length_penalty,
}
NAMES = tuple(sorted(BUILTINS))
if NAMES != tuple(sorted(REWARD_FUNCTIONS)):  # the schema offers REWARD_FUNCTIONS: each must exist here
    raise ImportError(f"tkc.runtime.rewards implements {NAMES}, tkc.bundle.kinds lists {REWARD_FUNCTIONS}")


def make(name: str, *, max_new_tokens: int, stop_ids: Sequence[int]) -> RewardFn:
    """The built-in reward function `name`; an unknown id is refused with the list of ids."""
    if name not in BUILTINS:
        raise ValueError(f"unknown reward_function {name!r}; built-in reward functions: {', '.join(NAMES)}")
    return BUILTINS[name](max_new_tokens, list(stop_ids))
