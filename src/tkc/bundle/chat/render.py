"""The sandboxed Jinja renderer of chat templates, byte-identical to HF `apply_chat_template(tokenize=False)`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# transformers copies the reasoning of a message under all three names before rendering
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


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
    # transformers' global: the live clock. A bundle's renders shadow it with the plan's instant (pinned_clock)
    return datetime.now().strftime(format)


class PinnedClock:
    """`strftime_now` reading one fixed instant, not the clock: passed in the render context, it shadows the
    environment's global, so a template that writes today's date renders the same text on every day."""

    def __init__(self, now: str):
        self.now = now
        self._instant = datetime.fromisoformat(now)

    def __call__(self, format: str) -> str:
        return self._instant.strftime(format)

    def __repr__(self) -> str:  # stable across processes: probe caches key on the render kwargs' repr
        return f"PinnedClock({self.now!r})"


def reads_clock(template_text: str) -> bool:
    """Whether the template reads `strftime_now` (from its syntax tree: a mention in a comment is no read; a
    template that does not parse is judged by its text)."""
    try:
        return "strftime_now" in _loaded_names(template_text)
    except jinja2.TemplateError:
        return "strftime_now" in template_text


@lru_cache(maxsize=256)
def _loaded_names(template_text: str) -> frozenset[str]:
    # every name the template loads, macros' bodies included (meta.find_undeclared_variables skips those)
    tree = _compile(template_text).environment.parse(template_text)
    return frozenset(n.name for n in tree.find_all(jinja2.nodes.Name) if n.ctx == "load")


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
