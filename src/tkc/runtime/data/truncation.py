"""`keep_response` truncation of one chat row: which prompt tokens survive cutoff_len, and what was cut.

A row longer than cutoff_len is cut like this (LLaMA-Factory also keeps the start of the prompt):
1. The response (the last assistant turn, from its first token) keeps as much as `keep_response_bounds` gives
   it; the prompt (everything before) gets the rest, at least min(its length, cutoff_len // 4) tokens.
2. The prompt is made to fit by dropping whole earlier turns first: the middle exchanges (user + assistant)
   oldest first, then the first turn's answer. The head (system prompt, tool definitions, the first user turn)
   and the last prompt turn stay whole while anything else can go.
3. Only then is text cut inside a turn: the remaining prompt keeps its first tokens (the system prompt and tool
   definitions first, then the start of the first turn) and the response's turn header, and the response keeps
   its start.
4. A row whose remaining assistant turns call a tool whose definition did not survive is dropped (and counted):
   it would train calls to a function the model was never shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

Span = tuple[int, int, int]


@dataclass
class Cut:
    """What truncation did to one row (reported per row in the build stats and by `tkc data inspect`)."""

    turns_dropped: int = 0
    prompt_tokens_cut: int = 0
    response_tokens_cut: int = 0
    missing_tools: tuple[str, ...] = ()  # called tools whose definitions were cut: the row is dropped


def keep_response_bounds(prompt_len: int, resp_len: int, cutoff: int) -> tuple[int, int]:
    """How many prompt and response tokens fit in cutoff (the response keeps its start)."""
    if prompt_len + resp_len <= cutoff:
        return prompt_len, resp_len
    min_prompt = min(prompt_len, cutoff // 4)
    if resp_len <= cutoff - min_prompt:
        return cutoff - resp_len, resp_len
    return min_prompt, cutoff - min_prompt


def _units(token_spans: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(kept-first prompt pieces, droppable units in drop order) of the prompt before the last assistant turn."""
    starts = [s for s, _ in token_spans]
    ends = [e for _, e in token_spans]
    last = len(token_spans) - 1
    if last == 0:
        return [(0, starts[0])], []
    middle = [(ends[k - 1], ends[k]) for k in range(1, last)]  # user k + assistant k
    head, first_answer, last_prompt = (0, starts[0]), (starts[0], ends[0]), (ends[last - 1], starts[last])
    return [head, last_prompt], [*middle, first_answer]


def select_prompt(token_spans: list[tuple[int, int]], budget: int, header: int = 0) -> tuple[np.ndarray, int, int]:
    """(kept prompt token indices, whole turns dropped, head tokens kept) for a prompt budget in tokens.

    `header`: how many tokens right before the response form its turn header (`<|im_start|>assistant\n`); a cut
    inside the prompt keeps them, so the response still follows its own header.
    """
    keep, droppable = _units(token_spans)
    kept_units, dropped = list(droppable), 0
    length = sum(e - s for s, e in keep) + sum(e - s for s, e in kept_units)
    while length > budget and kept_units:
        s, e = kept_units.pop(0)
        length -= e - s
        dropped += 1
    pieces = sorted(keep + kept_units)
    idx = np.concatenate([np.arange(s, e) for s, e in pieces]) if pieces else np.zeros(0, np.int64)
    head_kept = keep[0][1]
    if len(idx) > budget:  # cutting inside a turn keeps the prompt's start (and the response's header)
        header = min(header, budget // 2)
        idx = np.concatenate([idx[: budget - header], idx[len(idx) - header :]])
        head_kept = min(head_kept, budget - header)
    return idx, dropped, int(head_kept)


def tool_def_ends(text: str, tools: list[dict] | None, head_end_char: int) -> dict[str, int]:
    """Where each tool's rendered definition ends (a char index): at the next tool's name, the last at the head's
    end (the first user turn's content, before which every template writes the tool definitions)."""
    names = [((t.get("function") or t).get("name")) for t in tools or []]
    starts, pos = [], 0
    for name in names:
        found = text.find(json.dumps(name, ensure_ascii=False), pos, head_end_char) if isinstance(name, str) else -1
        starts.append(found if found >= 0 else pos)
        pos = starts[-1]
    ends = [*starts[1:], head_end_char]
    return {n: e for n, e in zip(names, ends, strict=True) if isinstance(n, str)}


def called_tools(messages: list[dict], turns: list[int]) -> set[str]:
    return {c["function"]["name"] for i in turns for c in messages[i].get("tool_calls") or []}
