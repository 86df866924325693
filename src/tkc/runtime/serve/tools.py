"""Tool calls in the model's output, read with the format the bundle's own template writes them in.

No per-family table: the template is asked. A probe conversation whose assistant turn calls a probe function is
rendered; the text the template writes for that call shows the format (an opening marker such as `<tool_call>`
or `[TOOL_CALLS]`, then a JSON object or list of objects whose keys hold the name and the arguments, then a
closing marker). Model output is parsed with that format. Templates that write calls some other way (not JSON:
deepseek3, glm4_5) have no format here; their tool calls come back as plain content.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from tkc.bundle.chat import ChatTemplate

_NAME, _KEY, _VALUE = "tkc_probe_fn", "tkc_probe_arg", "tkc_probe_value"
_PROBE_TOOL = {"type": "function", "function": {"name": _NAME, "description": "probe",
                                                 "parameters": {"type": "object", "properties": {_KEY: {"type": "string"}}}}}


@dataclass(frozen=True)
class ToolFormat:
    opening: str       # text before the JSON ('' when the call is bare JSON)
    closing: str       # text after it ('' when none)
    name_key: str      # "name"
    args_key: str      # "arguments" | "parameters"
    listed: bool       # the calls are one JSON list (mistral) rather than one object per marker


def probe_format(fmt: ChatTemplate | None) -> ToolFormat | None:
    """The template's tool-call format, or None when it renders no JSON tool call."""
    if fmt is None:
        return None
    user = {"role": "user", "content": "tkc probe question"}
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a1b2c3d4e", "type": "function", "function": {"name": _NAME, "arguments": {_KEY: _VALUE}}}]}
    try:
        head = fmt.prompt([user], tools=[_PROBE_TOOL])
        full = fmt.render([user, call], tools=[_PROBE_TOOL])
    except Exception:  # a template that refuses tools or this conversation has no format here
        return None
    if not full.startswith(head) or _NAME not in full[len(head):]:
        return None
    return _format_of(full[len(head):], fmt)


def _format_of(turn: str, fmt: ChatTemplate) -> ToolFormat | None:
    for start, ch in enumerate(turn):
        if ch not in "{[":
            continue
        try:
            value, end = json.JSONDecoder().raw_decode(turn, start)
        except ValueError:
            continue
        obj = value[0] if isinstance(value, list) and value else value
        if not isinstance(obj, dict) or obj.get("name") != _NAME and _NAME not in obj.values():
            continue
        name_key = next(k for k, v in obj.items() if v == _NAME)
        args_key = next((k for k, v in obj.items() if v == {_KEY: _VALUE} or v == json.dumps({_KEY: _VALUE})), None)
        if args_key is None:
            return None
        closing = turn[end:]
        for marker in (*fmt.stop_tokens, fmt.eos_token):
            if marker and marker in closing:
                closing = closing[: closing.index(marker)]
        before = turn[:start].split()  # the marker right before the JSON (not an empty think block before it)
        return ToolFormat(before[-1] if before else "", closing.strip(), name_key, args_key, isinstance(value, list))
    return None


def parse_calls(text: str, tf: ToolFormat) -> tuple[str, list[dict[str, Any]]]:
    """(content before the calls, OpenAI tool_calls) from a model's reply; no calls: (text, [])."""
    if tf.opening:
        start = text.find(tf.opening)
        if start < 0:
            return text, []
        content, rest = text[:start], text[start:]
    else:
        stripped = text.lstrip()
        if not stripped.startswith(("{", "[")):
            return text, []
        content, rest = "", stripped
    calls: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    while rest:
        rest = rest[len(tf.opening):].lstrip() if tf.opening and rest.startswith(tf.opening) else rest.lstrip()
        try:
            value, end = decoder.raw_decode(rest)
        except ValueError:
            return text, []  # not a well-formed call: the reply stays plain content
        for obj in value if isinstance(value, list) else [value]:
            call = _openai_call(obj, tf)
            if call is None:
                return text, []
            calls.append(call)
        rest = rest[end:].lstrip()
        if tf.closing and rest.startswith(tf.closing):
            rest = rest[len(tf.closing):].lstrip()
        if not tf.opening or not rest.startswith(tf.opening):
            break
    return (content.strip(), calls) if calls and not rest.strip() else (text, [])


def _openai_call(obj: Any, tf: ToolFormat) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get(tf.name_key), str):
        return None
    args = obj.get(tf.args_key, {})
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": obj[tf.name_key], "arguments": arguments}}


def may_be_call(text: str, tf: ToolFormat) -> int:
    """Where in a streamed reply a tool call may begin (content before it can go out now); len(text): nowhere."""
    if not tf.opening:
        return 0 if text.lstrip()[:1] in ("{", "[") or not text.strip() else len(text)
    hit = text.find(tf.opening)
    if hit >= 0:
        return hit
    for n in range(min(len(tf.opening) - 1, len(text)), 0, -1):
        if text.endswith(tf.opening[:n]):
            return len(text) - n
    return len(text)
