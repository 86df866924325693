"""Convert raw records of every supported format into the canonical example (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from tkc.runtime.data.errors import BadRecord
from tkc.runtime.data.parts import flatten_parts

_MEDIA = ("images", "videos", "audios")


def _get(record: dict, columns: dict, key: str, *, required: bool = True, types=(str,)):
    name = columns.get(key)
    if name is None:
        return None
    if name not in record or record[name] is None:
        if required:
            raise BadRecord(
                f"missing column {name!r} ({key}){_close(name, record)}",
                f"a column {name!r}; the record has {sorted(record)}",
            )
        return None
    value = record[name]
    if not isinstance(value, types):
        shown = json.dumps(value, default=str, ensure_ascii=False)[:60]
        raise BadRecord(f"column {name!r} ({key}) is {type(value).__name__} {shown}", _type_names(types))
    return value


def _close(name: str, record: dict) -> str:
    close = difflib.get_close_matches(name, [str(k) for k in record], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_names(types) -> str:
    names = {str: "a string", list: "a list", dict: "an object", bool: "a boolean", int: "an integer"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _nonempty(text: str, what: str) -> str:
    if not text.strip():
        raise BadRecord(f"{what} is empty", f"a non-empty {what}")
    return text


# ---------------------------------------------------------------- tools and tool calls


def parse_tools(value) -> list[dict] | None:
    """A tools column (JSON string or list) as an OpenAI-style list of {"type": "function", "function": {...}}."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRecord(
                f"tools is not valid JSON ({exc.msg})", "a JSON list of function schemas"
            ) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRecord(f"tools is {type(value).__name__}", "a list of function schema objects")
    tools = [t if "function" in t else {"type": "function", "function": t} for t in value]
    return tools or None


def parse_tool_calls(content) -> list[dict]:
    """A function-call turn (`{"name":..., "arguments":...}` or a list of them) as OpenAI `tool_calls`."""
    calls = content
    if isinstance(content, str):
        try:
            calls = json.loads(content)
        except json.JSONDecodeError as exc:
            raise BadRecord(
                f"function call is not valid JSON ({exc.msg})", '{"name": ..., "arguments": {...}}'
            ) from None
    calls = calls if isinstance(calls, list) else [calls]
    return [_tool_call(c) for c in calls]


def _tool_call(call) -> dict:
    call = call.get("function", call) if isinstance(call, dict) else call
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise BadRecord(
            f"function call {json.dumps(call, default=str)[:60]}", 'an object {"name": str, "arguments": object}'
        )
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise BadRecord(
                "function call arguments are not valid JSON", "arguments as a JSON object"
            ) from None
    if not isinstance(args, dict):
        raise BadRecord(f"function call arguments are {type(args).__name__}", "arguments as a JSON object")
    return {"type": "function", "function": {"name": call["name"], "arguments": args}}


# ---------------------------------------------------------------- alpaca


def _alpaca_history(history) -> list[dict]:
    messages = []
    for i, pair in enumerate(history or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise BadRecord(
                f"history item {i} is {json.dumps(pair, default=str)[:60]}", "a [query, response] pair of strings"
            )
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def convert_alpaca(record: dict, columns: dict, kind: str) -> dict:
    system = _get(record, columns, "system", required=False)
    prompt = _get(record, columns, "prompt")
    query = _get(record, columns, "query", required=False)
    user = _nonempty("\n".join(x for x in (prompt, query) if x), "instruction")
    messages = [{"role": "system", "content": system}] if system else []
    messages += _alpaca_history(_get(record, columns, "history", required=False, types=(list,)))
    messages.append({"role": "user", "content": user})
    example = _base(record, columns)
    if kind == "preference":
        example["chosen"] = {
            "role": "assistant",
            "content": _nonempty(_get(record, columns, "chosen"), "chosen"),
        }
        example["rejected"] = {
            "role": "assistant",
            "content": _nonempty(_get(record, columns, "rejected"), "rejected"),
        }
    else:
        response = _get(record, columns, "response")
        messages.append({"role": "assistant", "content": _nonempty(response, "response")})
    example["messages"] = messages
    if kind == "kto":
        example["label"] = _kto_label(record, columns)
    return example


def _base(record: dict, columns: dict) -> dict:
    return {"messages": [], "tools": parse_tools(_get(record, columns, "tools", required=False, types=(str, list))),
            "chosen": None, "rejected": None, "label": None, "text": None,
            **{m: _get(record, columns, m, required=False, types=(list,)) or [] for m in _MEDIA}}  # fmt: skip


def _kto_label(record: dict, columns: dict) -> bool:
    value = _get(record, columns, "kto_tag", types=(bool, int, str))
    table = {True: True, False: False, "true": True, "false": False}  # 1 and 0 hash as True and False
    key = value.lower() if isinstance(value, str) else value
    if key not in table:
        raise BadRecord(f"kto label is {value!r}", "true or false")
    return table[key]


# ---------------------------------------------------------------- sharegpt / openai


def _role_map(tags: dict) -> dict:
    pairs = [("user", "user"), ("assistant", "assistant"), ("observation", "tool"),
             ("function", "function_call"), ("system", "system")]  # fmt: skip
    return {tags[k]: role for k, role in pairs if tags.get(k)}


def _message(m, i: int, tags: dict, roles: dict) -> dict:
    rtag, ctag = tags["role"], tags["content"]
    if not isinstance(m, dict) or rtag not in m:
        raise BadRecord(
            f"message {i} is {json.dumps(m, default=str)[:60]}", f"an object with {rtag!r} and {ctag!r}"
        )
    if not isinstance(m[rtag], str) or m[rtag] not in roles:
        shown = repr(m[rtag]) if isinstance(m[rtag], str) else json.dumps(m[rtag], default=str)[:40]
        raise BadRecord(f"message {i} has {rtag} {shown}", f"one of {', '.join(map(repr, roles))}")
    role, content = roles[m[rtag]], m.get(ctag)
    if role == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": parse_tool_calls(content)}
    reasoning, calls = m.get("reasoning_content"), []
    if isinstance(content, list):
        content, from_parts, raw_calls = flatten_parts(content, f"message {i}")
        reasoning = from_parts if from_parts is not None else reasoning
        calls = parse_tool_calls(raw_calls) if raw_calls else []
    if role == "assistant" and m.get("tool_calls"):
        calls += parse_tool_calls(m["tool_calls"])
    if content is None and calls:
        content = ""
    if not isinstance(content, str):
        raise BadRecord(f"message {i} {ctag} is {type(content).__name__}", f"{ctag!r} as a string or content parts")
    return _with_extras({"role": role, "content": content}, i, reasoning, calls)


def _with_extras(out: dict, i: int, reasoning, calls: list) -> dict:
    """Reasoning and tool calls belong to assistant turns only; elsewhere they would be silently lost."""
    for what, value in (("reasoning", reasoning), ("tool calls", calls)):
        if value and out["role"] != "assistant":
            raise BadRecord(f"message {i} ({out['role']}) carries {what}", f"{what} on assistant messages only")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise BadRecord(f"message {i} reasoning_content is {type(reasoning).__name__}", "a string")
        out["reasoning_content"] = reasoning
    if calls:
        out["tool_calls"] = calls
    return out


def _check_turns(messages: list[dict], *, ends_with_assistant: bool) -> None:
    """After an optional system message, user/tool turns and assistant turns must alternate."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, m in enumerate(body):
        want_user = i % 2 == 0
        if (m["role"] in ("user", "tool")) != want_user or m["role"] == "system":
            want = "user or observation" if want_user else "assistant or function_call"
            raise BadRecord(
                f"turn {i} is {m['role']!r}", f"{want} (turns must alternate after the system message)"
            )
    if not body:
        raise BadRecord("no conversation turns", "at least one user turn")
    if ends_with_assistant and body[-1]["role"] != "assistant":
        raise BadRecord(
            f"the last turn is {body[-1]['role']!r}", "the conversation to end with an assistant turn"
        )
    if not ends_with_assistant and body[-1]["role"] == "assistant":
        raise BadRecord(
            "the last turn is 'assistant'", "the prompt to end with a user turn (chosen/rejected follow it)"
        )


def convert_chat(record: dict, columns: dict, tags: dict, kind: str) -> dict:
    roles = _role_map(tags)
    raw = _get(record, columns, "messages", types=(list,))
    messages = [_message(m, i, tags, roles) for i, m in enumerate(raw)]
    system = _get(record, columns, "system", required=False)
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    example = _base(record, columns)
    if kind == "preference":
        example["chosen"] = _pref_turn(record, columns, "chosen", tags, roles)
        example["rejected"] = _pref_turn(record, columns, "rejected", tags, roles)
    _check_turns(messages, ends_with_assistant=kind != "preference")
    example["messages"] = messages
    if kind == "kto":
        example["label"] = _kto_label(record, columns)
    return example


def _pref_turn(record: dict, columns: dict, key: str, tags: dict, roles: dict) -> dict:
    turn = _message(_get(record, columns, key, types=(dict,)), 0, tags, roles)
    if turn["role"] != "assistant":
        raise BadRecord(
            f"{key} has role {turn['role']!r}", f"{key} to be an assistant (or function_call) turn"
        )
    return turn


# ---------------------------------------------------------------- text and media


def convert_text(record: dict, columns: dict) -> dict:
    text = _nonempty(_get(record, columns, "text"), "text")
    return {"messages": [], "tools": None, "chosen": None, "rejected": None, "label": None, "text": text,
            "images": [], "videos": [], "audios": []}  # fmt: skip


def resolve_media(example: dict, base_dir: Path) -> dict:
    """Media paths relative to the dataset file become absolute; a missing file is a bad record."""
    for key in _MEDIA:
        resolved = []
        for item in example[key]:
            if not isinstance(item, str):
                raise BadRecord(f"{key} item is {type(item).__name__}", "a file path or URL string")
            path = item if "://" in item else str((base_dir / item).resolve())
            if "://" not in item and not Path(path).is_file():
                raise BadRecord(f"{key} file {item!r} does not exist", f"a file relative to {base_dir}")
            resolved.append(path)
        example[key] = resolved
    return example


def convert_record(record, entry: dict, base_dir: Path, media=None) -> dict:
    """One raw record -> canonical example, or BadRecord. `media` (a runtime.data.media.MediaIndex) resolves the
    media references by the bundle's media rules; without one (bundles without media roots) they resolve against
    `base_dir`."""
    if isinstance(record, BadRecord):
        raise record
    if not isinstance(record, dict):
        raise BadRecord(f"record is {type(record).__name__}", "a JSON object")
    fmt, kind = entry["format"], entry["kind"]
    if fmt == "text":
        return convert_text(record, entry["columns"])
    if fmt == "alpaca":
        example = convert_alpaca(record, entry["columns"], kind)
    elif fmt in ("sharegpt", "openai"):
        example = convert_chat(record, entry["columns"], entry["tags"], kind)
    else:
        raise BadRecord(f"unknown format {fmt!r}", "alpaca, sharegpt, openai or text")
    if media is not None:
        for key in _MEDIA:
            example[key] = media.resolve(key, example[key])
        return example
    return resolve_media(example, base_dir)
