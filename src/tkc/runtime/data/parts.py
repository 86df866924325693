"""Message content given as a list of parts (OpenAI / Anthropic / Responses style) -> one canonical message.

The vendor chat templates that read list content (GLM-4.5's `visible_text`, Qwen2-VL, Llama 4) concatenate the
text parts with nothing between them; tkc flattens the same way before rendering, so a template that only reads
string content (Qwen3 renders a list as '') still sees the text. Reasoning parts go to `reasoning_content`
(rendered only by templates that read that field: `encode.render_all` refuses the record otherwise), tool-call
parts to `tool_calls`. Any other part type (images, audio, files) is a bad record until multimodal rows exist.
The compiler's probe knows the same part types (`tkc.compiler.dataset_formats.CONTENT_PART_TYPES`; a test keeps
the two equal).
"""

from __future__ import annotations

import json

from tkc.runtime.data.errors import BadRecord

TEXT_PARTS = ("text", "input_text", "output_text")
REASONING_PARTS = ("reasoning", "thinking")
TOOL_CALL_PARTS = ("tool_call", "tool_use", "function_call")
PART_TYPES = TEXT_PARTS + REASONING_PARTS + TOOL_CALL_PARTS
_EXPECTED = f"content parts of type {', '.join(PART_TYPES)} (media parts need multimodal support)"


def _shown(value) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)[:60]


def _text_of(part: dict, keys: tuple[str, ...], what: str) -> str:
    for key in keys:
        value = part.get(key)
        if isinstance(value, str):
            return value
        if key == "summary" and isinstance(value, list):  # Responses API: summary = [{"type": ..., "text": ...}]
            texts = [s.get("text") if isinstance(s, dict) else s for s in value]
            if all(isinstance(t, str) for t in texts):
                return "".join(texts)
    raise BadRecord(f"{what} {_shown(part)} has no text", f"a {what} with one of {', '.join(keys)} as a string")


def _tool_call_part(part: dict) -> dict:
    """A tool-call part in OpenAI (`function`), Anthropic (`name`/`input`) or Responses (`name`/`arguments`) shape."""
    if isinstance(part.get("function"), dict):
        return part["function"]
    call = {"name": part.get("name")}
    args = part.get("arguments", part.get("input", {}))
    call["arguments"] = args
    return call


def flatten_parts(parts: list, where: str) -> tuple[str, str | None, list]:
    """(text, reasoning or None, raw tool calls) of a content-part list; `where` names the message in errors."""
    texts, reasoning, calls = [], [], []
    for j, part in enumerate(parts):
        if isinstance(part, str):  # a bare string item, as GLM-4.5's template accepts
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise BadRecord(f"{where} content part {j} is {_shown(part)}", 'an object with a "type"')
        if kind in TEXT_PARTS:
            texts.append(_text_of(part, ("text",), f"{kind} part"))
        elif kind in REASONING_PARTS:
            reasoning.append(_text_of(part, ("text", "thinking", "reasoning", "content", "summary"), f"{kind} part"))
        elif kind in TOOL_CALL_PARTS:
            calls.append(_tool_call_part(part))
        else:
            raise BadRecord(f"{where} content part {j} has unsupported type {kind!r}", _EXPECTED)
    return "".join(texts), ("".join(reasoning) if reasoning else None), calls
