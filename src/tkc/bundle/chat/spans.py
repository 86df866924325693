"""Assistant spans: the characters of a rendered conversation a model is trained to generate."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tkc.bundle.chat.render import (
    SpanError,
    _context,
    _render_tracked,
    has_generation_markers,
    render,
)

# Private-use characters: never produced by a tokenizer's text, never stripped by a template
_SENTINELS = ("\ue000", "\ue001")

Span = tuple[int, int, int]


def assistant_spans(
    template_text: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> tuple[str, list[Span]]:
    """The rendered conversation and, per assistant turn, the char span `(start, end, message_index)` to train on.

    A span covers what the model must generate after the generation prompt: the turn's rendered content (with
    any reasoning block or tool calls the template writes there) and the end-of-turn marker (`<|im_end|>`,
    `<|eot_id|>`, `</s>`, ...). It excludes the whitespace the template writes after the marker and the
    next turn's header. Found by incremental rendering: `render(messages[:i], add_generation_prompt=True)`
    ends where turn i starts, `render(messages[:i+1])` ends where it ends. Templates that rewrite a turn
    once later turns exist (Qwen3 drops earlier reasoning) fail that prefix check; such turns are located
    segment by segment instead (see `_rewritten_span`). Templates with `{% generation %}` markers use them.

    Consequences worth knowing: a final turn also carries what the template appends only at the very end
    (Phi-3.5's `<|endoftext|>`); templates whose turns end with the next role header rather than a token
    (ChatGLM3, GLM-4) give spans without an end marker: `trained_spans`, what training and `tkc catalog render
    --mode training` use, closes them.
    """
    kw = {"tools": tools, "bos_token": bos_token, "eos_token": eos_token, **extra}
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if has_generation_markers(template_text):
        return render(template_text, messages, **kw), _generation_spans(template_text, messages, turns, kw)
    # the conversation is copied to plain data once; each prefix render takes a slice of it
    ctx = _context(messages, tools, False, {"bos_token": bos_token, "eos_token": eos_token, **extra})

    def prefix(n: int, add_generation_prompt: bool) -> str:
        msgs = ctx["messages"][:n]
        return _render_tracked(
            template_text, {**ctx, "messages": msgs, "add_generation_prompt": add_generation_prompt}
        )[0]

    full = prefix(len(messages), False)
    return full, [_turn_span(template_text, messages, i, full, kw, prefix) for i in turns]


def trained_spans(
    template_text: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    bos_token: str = "",
    eos_token: str = "",
    stop_tokens: tuple[str, ...] = (),
    **extra: Any,
) -> tuple[str, list[Span]]:
    """The text training sees and its spans: `assistant_spans`, each turn closed by a token the model stops at.

    Templates that end an assistant turn with the next message's header (ChatGLM3, GLM-4, GLM-4.5/4.6,
    Apertus: `...answer<|user|>`) give spans without an end marker, and a model trained on them never learns
    to stop. Like LLaMA-Factory's `efficient_eos` templates, a turn followed by another message then also
    trains on that message's first token when it is a stop token (GLM-4's generation config stops at
    `<|user|>` and `<|observation|>`; LLaMA-Factory trains eos there instead, a label that differs from its
    input), and the final turn gets `eos_token` appended to the text, trained like the rest of the turn.
    Which templates close turns this way is found by rendering a probe conversation (`_closed_by_header`),
    not by name. Spans that already end with a stop token or eos are left alone, so are the texts and spans
    of every template whose turns all end with one.
    """
    kw = {"bos_token": bos_token, "eos_token": eos_token, **extra}
    full, spans = assistant_spans(template_text, messages, tools=tools, **kw)
    markers = tuple(dict.fromkeys(t for t in (*stop_tokens, eos_token) if t))
    if not markers or all(full[s:e].endswith(markers) for s, e, _ in spans):
        return full, spans
    append = eos_token if _closed_by_header(template_text, markers, kw) else ""
    return close_turns(full, spans, markers, append)


def close_turns(full: str, spans: list[Span], markers: tuple[str, ...], eos_token: str) -> tuple[str, list[Span]]:
    """Extend a span without an end marker over the stop token that follows it (and the whitespace before
    it); the final turn, with nothing but whitespace after it, gets `eos_token` (when given) appended to the
    text, so that the text trained on is always the rendered conversation, possibly followed by eos."""
    out: list[Span] = []
    for s, e, i in spans:
        rest = full[e:]
        at = e + len(rest) - len(rest.lstrip())
        follows = next((m for m in markers if full.startswith(m, at)), None)
        if full[s:e].endswith(markers):
            out.append((s, e, i))
        elif follows is not None:
            out.append((s, at + len(follows), i))
        elif eos_token and not rest.strip():  # after the content's own whitespace, as a next header would be
            full += eos_token
            out.append((s, len(full), i))
        else:
            out.append((s, e, i))
    return full, out


_PROBE = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"})
_CLOSED: dict[tuple, bool] = {}


def _closed_by_header(template_text: str, markers: tuple[str, ...], kw: dict) -> bool:
    """Whether the template ends an assistant turn with a stop token the next message's header starts with:
    in [user, assistant, user] the assistant's span lacks an end marker and a stop token follows it."""
    key = (template_text, markers, json.dumps(kw, sort_keys=True, default=repr))
    if key not in _CLOSED:
        if len(_CLOSED) >= 32:
            _CLOSED.clear()
        try:
            full, spans = assistant_spans(template_text, [dict(m) for m in _PROBE], **kw)
        except Exception:  # a template refusing the probe is not known to close turns this way
            spans = []
        _CLOSED[key] = len(spans) == 1 and not full[spans[0][0] : spans[0][1]].endswith(markers) and \
            full[spans[0][1] :].lstrip().startswith(markers)  # fmt: skip
    return _CLOSED[key]


def _generation_spans(template_text: str, messages: list[dict], turns: list[int], kw: dict) -> list[Span]:
    extra = {k: v for k, v in kw.items() if k != "tools"}
    ctx = _context(messages, kw["tools"], False, extra)
    full, marked = _render_tracked(template_text, ctx)
    if len(marked) != len(turns):
        raise SpanError(f"template marks {len(marked)} generation blocks for {len(turns)} assistant turns")
    # a block may close after the whitespace that follows the end marker (SmolLM3's '<|im_end|>\n'): not trained
    return [(s, _trim_end(full[:e], s), i) for (s, e), i in zip(marked, turns, strict=True)]


def _turn_span(
    template_text: str, messages: list[dict], i: int, full: str, kw: dict, prefix: Callable[[int, bool], str]
) -> Span:
    before = prefix(i, True)
    # the last turn's prefix render is the full render itself (same messages, same options)
    through = full if i == len(messages) - 1 else prefix(i + 1, False)
    if full.startswith(through) and through.startswith(before):
        return len(before), _trim_end(through, len(before)), i
    return _rewritten_span(template_text, messages, i, full, kw)


def _trim_end(text: str, start: int) -> int:
    # The whitespace after the end-of-turn marker separates turns; the model never generates it
    return max(start, len(text.rstrip()))


def _rewritten_span(template_text: str, messages: list[dict], i: int, full: str, kw: dict) -> Span:
    """Locate turn i inside `full` when the prefix renders disagree with it.

    This happens when a template rewrites a turn once later turns exist (Qwen3 drops earlier reasoning),
    appends text only to the last turn (Phi-3.5's trailing eos) or moves the system prompt (Mistral v3 puts
    it before the last user message). The turn's content is found in the full conversation by rendering it
    twice with two sentinel contents: outside the content the three renders agree. The span starts where
    the generation prompt ends, when the text before the turn survives in `full`, else at the content; it
    ends after the closing text the template writes after the turn's content (`_closing_len`).
    """
    renders = [render(template_text, _with_content(messages, i, s), **kw) for s in _SENTINELS]
    if renders[0] == renders[1]:
        raise SpanError(f"turn {i}: the template does not render this turn's content")
    head = _common_prefix_len(renders[0], renders[1])
    tail = _common_prefix_len(renders[0][::-1], renders[1][::-1])
    if full[:head] != renders[0][:head] or not full.endswith(renders[0][len(renders[0]) - tail :]):
        raise SpanError(f"turn {i}: its content changes the text around it; cannot locate it")
    content_end = len(full) - tail
    start = min(_turn_start(template_text, messages, i, full, kw), head)
    closing = _closing_text(template_text, messages, i, kw)
    end = content_end + _closing_len(closing, full[content_end:])
    if end < start:  # the turn alone reads differently (Nemotron Nano v2 puts a final turn's tool calls apart)
        raise SpanError(f"turn {i}: the template writes this turn differently when it is last; cannot locate it")
    return start, end, i


def _with_content(messages: list[dict], i: int, content: str) -> list[dict]:
    return [*messages[:i], {**messages[i], "content": content}, *messages[i + 1 :]]


def _turn_start(template_text: str, messages: list[dict], i: int, full: str, kw: dict) -> int:
    """Where the model starts generating turn i: after the part of the generation prompt `full` repeats."""
    before = render(template_text, messages[:i], add_generation_prompt=True, **kw)
    if full.startswith(before):
        return len(before)
    head = render(template_text, messages[:i], **kw)
    if not full.startswith(head):
        return len(full)  # the caller falls back to the content start
    # Qwen3 without thinking prompts with an empty <think></think> block that history turns do not carry
    return len(head) + _common_prefix_len(before[len(head) :], full[len(head) :])


def _closing_text(template_text: str, messages: list[dict], i: int, kw: dict) -> str:
    """What the template writes after turn i's content when it is the last turn (`<|im_end|>`, ...)."""
    tails = [render(template_text, _with_content(messages[: i + 1], i, s), **kw) for s in _SENTINELS]
    n = _common_prefix_len(tails[0][::-1], tails[1][::-1])
    return tails[0][len(tails[0]) - n :].rstrip()


def _closing_len(closing: str, after: str) -> int:
    """How much of `after` (the text after the content) is the turn's closing text.

    The closing text of a last turn may carry more than a middle turn does (Phi-3.5 adds eos at the end
    of the conversation): keep the part `after` repeats, cut back to whitespace or to the end of a special
    token so that a half-matched token (`<|` of `<|endoftext|>` against `<|user|>`) is not taken (Phi-4-mini
    writes `<|end|><|endoftext|>` with nothing between), and drop trailing whitespace.
    """
    n = _common_prefix_len(closing, after)
    if n < len(closing):
        n = max((k + 1 for k in range(n) if closing[k].isspace() or closing[k] == ">"), default=0)
    return len(closing[:n].rstrip())


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
