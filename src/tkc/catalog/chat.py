"""Chat templates: the catalog of `.jinja` files and a renderer byte-identical to HF `apply_chat_template`."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES_DIR = Path(__file__).parent / "templates"
_ID_RE = re.compile(r"^[a-z0-9_]+$")
# transformers copies the reasoning of a message under all three names before rendering
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Private-use characters: never produced by a tokenizer's text, never stripped by a template
_SENTINELS = ("\ue000", "\ue001")

Span = tuple[int, int, int]


class TemplateRefused(Exception):
    """The chat template called `raise_exception(reason)`: the vendor refuses this conversation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SpanError(ValueError):
    """An assistant turn cannot be located in the rendered conversation."""


class _Refusal(jinja2.exceptions.TemplateError):
    # A distinct subclass so template bugs (undefined attributes, ...) are not mistaken for refusals
    pass


class _GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, recording the char spans it wraps (as transformers does)."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        environment.extend(track_generation=self.track)
        self._blocks: list[str] | None = None
        self._spans: list[tuple[int, int]] | None = None

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_wrap"), [], [], body).set_lineno(lineno)

    def _wrap(self, caller: Any) -> str:
        text = caller()
        if self._blocks is not None and self._spans is not None:
            start = len("".join(self._blocks))
            self._spans.append((start, start + len(text)))
        return text

    @contextmanager
    def track(self, blocks: list[str], spans: list[tuple[int, int]]):
        self._blocks, self._spans = blocks, spans
        try:
            yield
        finally:
            self._blocks, self._spans = None, None


def _raise_exception(message: str) -> None:
    raise _Refusal(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
):
    # transformers' override: no HTML escaping, non-ASCII kept, key order kept unless asked
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    # `dict` as transformers exposes it: callable and fromkeys only, no attribute access to the type
    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Same guard as transformers: no underscore-prefixed attributes on namespaces
    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")


@lru_cache(maxsize=256)
def _compile(template_text: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template_text)


def _plain(value: Any) -> Any:
    # A fresh copy of plain JSON data, like transformers' `_plain_template_data`
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _alias_reasoning(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _context(messages: list[dict], tools: Any, add_generation_prompt: bool, extra: dict) -> dict:
    ctx = {"documents": None, **_plain(extra)}
    ctx.update(
        messages=_alias_reasoning(_plain(list(messages))),
        tools=_plain(tools),
        add_generation_prompt=add_generation_prompt,
    )
    return ctx


def _render_tracked(template_text: str, ctx: dict) -> tuple[str, list[tuple[int, int]]]:
    template = _compile(template_text)
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        with template.environment.track_generation(blocks, spans):  # type: ignore[attr-defined]
            for block in template.generate(**ctx):
                blocks.append(block)
    except _Refusal as exc:
        raise TemplateRefused(str(exc.message)) from None
    return "".join(blocks), spans


def render(
    template_text: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render `messages` exactly as `tokenizer.apply_chat_template(..., tokenize=False)` would.

    `**extra` are the template's other variables (`enable_thinking`, `date_string`, a tokenizer's other
    special tokens). One difference by contract: `bos_token`/`eos_token` are always defined here (empty by
    default) where transformers leaves them undefined for a tokenizer without them.
    """
    extra = {"bos_token": bos_token, "eos_token": eos_token, **extra}
    return _render_tracked(template_text, _context(messages, tools, add_generation_prompt, extra))[0]


def has_generation_markers(template_text: str) -> bool:
    return re.search(r"\{%-?\s*generation\s*-?%\}", template_text) is not None


# ---------------------------------------------------------------- assistant spans


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
    (ChatGLM3, GLM-4) give spans without an end marker, so the runtime must append the stop token itself.
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


def _generation_spans(template_text: str, messages: list[dict], turns: list[int], kw: dict) -> list[Span]:
    extra = {k: v for k, v in kw.items() if k != "tools"}
    ctx = _context(messages, kw["tools"], False, extra)
    _, marked = _render_tracked(template_text, ctx)
    if len(marked) != len(turns):
        raise SpanError(f"template marks {len(marked)} generation blocks for {len(turns)} assistant turns")
    return [(s, e, i) for (s, e), i in zip(marked, turns, strict=True)]


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
    return start, content_end + _closing_len(closing, full[content_end:]), i


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
    of the conversation): keep the part `after` repeats, cut back to whitespace so that a half-matched
    token (`<|` of `<|endoftext|>` against `<|user|>`) is not taken, and drop trailing whitespace.
    """
    n = _common_prefix_len(closing, after)
    if n < len(closing):
        n = max((k + 1 for k in range(n) if closing[k].isspace()), default=0)
    return len(closing[:n].rstrip())


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------- catalog


def list_templates() -> list[str]:
    """Ids of the catalog's templates, checking that every `.jinja` has its `.yaml` and vice versa."""
    return sorted(_registry())


def load_template(template_id: str) -> tuple[str, dict]:
    """The template text and its metadata (`<id>.yaml`)."""
    ids = _registry()
    if template_id not in ids:
        close = difflib.get_close_matches(template_id, sorted(ids), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown chat template {template_id!r}{hint}")
    text = (TEMPLATES_DIR / f"{template_id}.jinja").read_text(encoding="utf-8")
    meta = yaml.safe_load((TEMPLATES_DIR / f"{template_id}.yaml").read_text(encoding="utf-8"))
    return text, meta


@lru_cache(maxsize=1)
def _registry() -> frozenset[str]:
    jinja = {p.stem for p in TEMPLATES_DIR.glob("*.jinja")}
    meta = {p.stem for p in TEMPLATES_DIR.glob("*.yaml")}
    if jinja != meta:
        raise ValueError(
            f"templates without a pair: .jinja only {sorted(jinja - meta)}, .yaml only {sorted(meta - jinja)}"
        )
    bad = sorted(i for i in jinja if not _ID_RE.match(i))
    if bad:
        raise ValueError(f"template ids must match [a-z0-9_]+: {bad}")
    return frozenset(jinja)
