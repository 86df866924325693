"""Dataset formats and kinds: the column and role-tag keys each one reads, with their defaults (pure data)."""

from __future__ import annotations

import difflib
import json

from tkc.bundle.kinds import STAGE_DATASET_KINDS

FORMATS = ("alpaca", "sharegpt", "openai", "text")
KINDS = ("sft", "preference", "kto", "text")

# Every key resolved.json carries, in this order; a value of None means "this dataset has no such column".
COLUMN_KEYS = (
    "prompt", "query", "response", "system", "history", "tools", "messages", "chosen", "rejected",
    "kto_tag", "images", "videos", "audios", "text",
)  # fmt: skip
TAG_KEYS = ("role", "content", "user", "assistant", "observation", "function", "system")

_MEDIA = ("images", "videos", "audios")
_CHAT_COLUMNS = frozenset({"messages", "system", "tools", *_MEDIA})
# Which column keys a format may name at all (kind-specific keys are checked separately).
_FORMAT_COLUMNS = {
    "alpaca": frozenset({"prompt", "query", "response", "system", "history", "tools", *_MEDIA}),
    "sharegpt": _CHAT_COLUMNS,
    "openai": _CHAT_COLUMNS,
    "text": frozenset({"text"}),
}
_KIND_COLUMNS = {"sft": frozenset(), "preference": frozenset({"chosen", "rejected"}),
                 "kto": frozenset({"kto_tag"}), "text": frozenset()}  # fmt: skip

_DEFAULT_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
    "openai": {"messages": "messages"},
    "text": {"text": "text"},
}
_DEFAULT_KIND_COLUMNS = {
    "preference": {"chosen": "chosen", "rejected": "rejected"},
    "kto": {"kto_tag": "label"},
}
_DEFAULT_TAGS: dict[str, dict[str, str | None]] = {
    "alpaca": dict.fromkeys(TAG_KEYS),
    "text": dict.fromkeys(TAG_KEYS),
    "sharegpt": {"role": "from", "content": "value", "user": "human", "assistant": "gpt",
                 "observation": "observation", "function": "function_call", "system": "system"},
    "openai": {"role": "role", "content": "content", "user": "user", "assistant": "assistant",
               "observation": "tool", "function": "function_call", "system": "system"},
}  # fmt: skip

# Optional columns read when the data has them though the recipe names none: a chat file's tool definitions
# belong to its tool calls (dropping them trains calls to functions the model was never shown). Naming the key
# in `columns` (a column name, or null to leave the data's column out) turns this off.
_AUTO_COLUMNS = {"sharegpt": {"tools": "tools"}, "openai": {"tools": "tools"}}


def auto_columns(fmt: str, user_columns: dict | None) -> dict:
    """{key: column name} the probe maps when the data has that column and the recipe did not name the key."""
    return {k: v for k, v in _AUTO_COLUMNS.get(fmt, {}).items() if k not in (user_columns or {})}


def suggest(word: str, choices: list[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(choices)}"


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown dataset {what} {value!r}{_did_you_mean(value, choices)}")


def _check_mapping(what: str, given: dict, keys: tuple[str, ...]) -> None:
    for key, value in given.items():
        if key not in keys:
            raise ValueError(f"unknown {what} key {key!r}{_did_you_mean(key, keys)}")
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{what} {key!r} must be a non-empty string or null, got {value!r}")


def infer_kind(fmt: str, columns: dict | None = None, *, ranking: bool = False) -> str:
    """The dataset kind a format and its declared columns imply: text, preference (pairs), kto (label) or sft."""
    columns = columns or {}
    if fmt == "text":
        return "text"
    if ranking or columns.get("chosen") or columns.get("rejected"):
        return "preference"
    if columns.get("kto_tag"):
        return "kto"
    return "sft"


def resolve_columns_and_tags(
    fmt: str, kind: str, columns: dict | None, tags: dict | None
) -> tuple[dict, dict]:
    """Every column and tag key filled in: the user's names over the format's and kind's defaults.

    Raises ValueError naming the first bad key (unknown, wrong type, or not read by this format/kind).
    """
    _check_choice("format", fmt, FORMATS)
    _check_choice("kind", kind, KINDS)
    if (fmt == "text") != (kind == "text"):
        raise ValueError(f"format {fmt!r} cannot hold kind {kind!r}: plain text goes with format 'text' only")
    columns, tags = dict(columns or {}), dict(tags or {})
    _check_mapping("column", columns, COLUMN_KEYS)
    _check_mapping("tag", tags, TAG_KEYS)
    allowed = _FORMAT_COLUMNS[fmt] | _KIND_COLUMNS[kind]
    for key, value in columns.items():
        if value is not None and key not in allowed:
            raise ValueError(
                f"column {key!r} is not read by format {fmt!r} with kind {kind!r}; "
                f"this format/kind reads: {', '.join(k for k in COLUMN_KEYS if k in allowed)}"
            )
    if tags and fmt in ("alpaca", "text") and any(v is not None for v in tags.values()):
        raise ValueError(f"format {fmt!r} has no role tags; tags apply to 'sharegpt' and 'openai'")
    defaults = {**_DEFAULT_COLUMNS[fmt], **_DEFAULT_KIND_COLUMNS.get(kind, {})}
    if kind == "preference" and fmt == "alpaca":
        defaults.pop("response", None)  # the answers live in chosen/rejected, not in a response column
    resolved_columns = {k: columns.get(k, defaults.get(k)) for k in COLUMN_KEYS}
    resolved_tags = {k: tags.get(k, _DEFAULT_TAGS[fmt][k]) for k in TAG_KEYS}
    return resolved_columns, resolved_tags


def check_stage_dataset_kind(stage_kind: str, dataset_name: str, dataset_kind: str) -> str | None:
    """A message when a stage of `stage_kind` cannot train on a dataset of `dataset_kind`, else None."""
    wanted = STAGE_DATASET_KINDS.get(stage_kind)
    if wanted is None or dataset_kind in wanted:
        return None
    return (
        f"stage kind {stage_kind!r} needs {' or '.join(wanted)} datasets; "
        f"dataset {dataset_name!r} is {dataset_kind!r}"
    )


# ---------------------------------------------------------------- record shapes (the probe checks the first records)


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# Content-part types a message's `content` list may hold (the runtime's `tkc.runtime.data.parts.PART_TYPES`:
# text parts are joined, reasoning goes to reasoning_content, tool calls to tool_calls; a test keeps both equal).
CONTENT_PART_TYPES = ("text", "input_text", "output_text", "reasoning", "thinking", "tool_call", "tool_use",
                      "function_call")  # fmt: skip


def _check_parts(i: int, parts: list) -> tuple[str, str] | None:
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else ("text" if isinstance(part, str) else None)
        if kind not in CONTENT_PART_TYPES:
            shown = repr(kind) if isinstance(kind, str) else json.dumps(part, default=str)[:60]
            return (f"item {i} content part {j} has unsupported type {shown}",
                    f"content parts of type {', '.join(CONTENT_PART_TYPES)} (media parts need multimodal support)")
    return None


def _check_messages(v: object, tags: dict) -> tuple[str, str] | None:
    role, content = tags.get("role") or "role", tags.get("content") or "content"
    if not isinstance(v, list) or not v:
        return "is not a non-empty list", f"a list of {{{role!r}: ..., {content!r}: ...}} objects"
    for i, m in enumerate(v):
        if not isinstance(m, dict) or role not in m or content not in m:
            return f"item {i} is {json.dumps(m, default=str)[:80]}", f"an object with keys {role!r} and {content!r}"
        if isinstance(m[content], list) and (bad := _check_parts(i, m[content])):
            return bad
    return None


def column_checks(columns: dict, fmt: str, tags: dict) -> dict:
    """For each named column: check(value) -> None, or (what is wrong, what was expected)."""

    def want(pred, expected):
        return lambda v: (
            None if pred(v) else (f"is {type(v).__name__} {json.dumps(v, default=str)[:60]}", expected)
        )

    text = want(lambda v: isinstance(v, str), "a string")
    optional_text = want(lambda v: v is None or isinstance(v, str), "a string or null")
    media = want(lambda v: v is None or _is_str_list(v), "a list of file paths (strings)")
    turn = text if fmt == "alpaca" else want(lambda v: isinstance(v, dict), "one message object")
    shapes = {
        "prompt": text, "query": optional_text, "response": text, "system": optional_text, "text": text,
        "history": want(lambda v: v is None or (isinstance(v, list) and all(_is_str_list(p) and len(p) == 2 for p in v)),
                        "a list of [query, response] string pairs"),
        "tools": want(lambda v: v is None or isinstance(v, (str, list)), "a JSON string or a list of tool objects"),
        "messages": lambda v: _check_messages(v, tags),
        "chosen": turn, "rejected": turn,
        "kto_tag": want(lambda v: isinstance(v, bool) or v in (0, 1, "true", "false", "True", "False"), "a boolean"),
        "images": media, "videos": media, "audios": media,
    }  # fmt: skip
    return {k: shapes[k] for k, name in columns.items() if name}


OPTIONAL_COLUMNS = ("query", "system", "history", "tools", "images", "videos", "audios")


# ---------------------------------------------------------------- LLaMA-Factory `dataset_info.json` records

_TAG_NAMES = {f"{k}_tag": k for k in TAG_KEYS}


def registry_entry(name: str, info: dict) -> dict | None:
    """One `dataset_info.json` record as a tkc dataset entry, or None when it names no file or HF hub id.

    Entry keys: name, source (local|hub), path, format, kind, columns, tags (all resolved), split, and
    subset/folder when given. A lone `prompt` column is LLaMA-Factory's pretraining convention and becomes
    format 'text'. Records only on the ModelScope/Modelers hubs are left out.
    """
    if "file_name" in info:
        source, where = "local", info["file_name"]
    elif "hf_hub_url" in info:
        source, where = "hub", info["hf_hub_url"]
    else:
        return None
    columns = dict(info.get("columns") or {})
    fmt = info.get("formatting", "alpaca")
    if fmt == "alpaca" and set(columns) == {"prompt"}:
        fmt, columns = "text", {"text": columns["prompt"]}
    kind = infer_kind(fmt, columns, ranking=bool(info.get("ranking")))
    tags = {_TAG_NAMES.get(k, k): v for k, v in (info.get("tags") or {}).items()}
    try:
        columns, tags = resolve_columns_and_tags(fmt, kind, columns, tags)
    except ValueError as exc:
        raise ValueError(f"dataset {name!r}: {exc}") from None
    entry = {"name": name, "source": source, "path": where, "format": fmt, "kind": kind,
             "columns": columns, "tags": tags, "split": info.get("split", "train")}  # fmt: skip
    entry.update({k: info[k] for k in ("subset", "folder") if k in info})
    return entry
