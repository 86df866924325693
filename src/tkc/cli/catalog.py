"""`tkc catalog`: list chat templates, model families and hardware profiles; render a conversation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


@app.command()
def templates() -> None:
    """Chat templates: id, tools, system, source."""
    from tkc.catalog.registry import templates as load

    rows = [[tid, "yes" if m.supports_tools else "", "yes" if m.supports_system else "no", m.source[:70]]
            for tid, m in sorted(load().items())]
    _table(f"{len(rows)} chat templates", ["id", "tools", "system", "source"], rows)


@app.command()
def families() -> None:
    """Model families: detection keys and default template."""
    from tkc.catalog.registry import families as load

    rows = [[fid, ", ".join(f.model_types), f.template, ", ".join(f.lora_targets)] for fid, f in sorted(load().items())]
    _table(f"{len(rows)} model families", ["id", "model_type", "template", "lora targets"], rows)


@app.command()
def profiles() -> None:
    """Hardware profiles."""
    from tkc.catalog.registry import profiles as load

    rows = [[pid, p.accelerator, f"{p.nodes}x{p.devices_per_node}", f"{p.memory_gb:g}", p.default_launch,
             p.lockfile] for pid, p in sorted(load().items())]
    _table(f"{len(rows)} hardware profiles", ["id", "accel", "nodes x dev", "GB", "launch", "lockfile"], rows)


MAX_CONVERSATION_BYTES = 16 << 20
_CONVERSATION_KEYS = ("messages", "tools", "add_generation_prompt")


class BadConversation(ValueError):
    """The conversation file cannot be rendered as given: the message names the file and what is wrong."""


def load_conversation(path: Path) -> dict[str, Any]:
    """Read and check `{"messages": [...], "tools": [...]?, "add_generation_prompt": bool?}`."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONVERSATION_BYTES + 1)
    except OSError as exc:
        raise BadConversation(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONVERSATION_BYTES:
        raise BadConversation(f"{path}: larger than {MAX_CONVERSATION_BYTES} bytes")
    try:
        conv = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadConversation(f"{path}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadConversation(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise BadConversation(f"{path}: JSON nested too deeply") from None
    _check_conversation(path, conv)
    return conv


def _check_conversation(path: Path, conv: Any) -> None:
    def bad(where: str, what: str) -> BadConversation:
        return BadConversation(f"{path}: {where}: {what}")

    if not isinstance(conv, dict):
        raise bad("top level", f"expected an object with \"messages\", got a JSON {_json_type(conv)}")
    if unknown := sorted(set(conv) - set(_CONVERSATION_KEYS)):
        raise bad(unknown[0], f"unknown key; the keys are {', '.join(_CONVERSATION_KEYS)}")
    messages = conv.get("messages")
    if not isinstance(messages, list):
        raise bad("messages", f"expected a list of messages, got {_json_type(messages)}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad(f"messages[{i}]", "expected an object with a string \"role\"")
        if not isinstance(msg.get("content"), (str, list, type(None))):
            raise bad(f"messages[{i}].content", f"expected a string or a list of parts, got "
                      f"{_json_type(msg.get('content'))}")
        parts: list[Any] = msg["content"] if isinstance(msg.get("content"), list) else []
        if not all(isinstance(part, dict) and isinstance(part.get("type"), str) for part in parts):
            raise bad(f"messages[{i}].content", "each part must be an object with a string \"type\"")
    tools = conv.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise bad("tools", "expected a list of tool objects")
    if not isinstance(conv.get("add_generation_prompt", True), bool):
        raise bad("add_generation_prompt", "expected true or false")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@app.command()
def render(
    template: Annotated[str, typer.Argument(help="Template id.")],
    conversation: Annotated[Path, typer.Argument(help="JSON with messages, optional tools, add_generation_prompt.")],
) -> None:
    """Print exactly the rendered text (nothing added); exit 1 with the reason if the template refuses."""
    import jinja2

    from tkc.bundle.chat import TemplateRefused
    from tkc.bundle.chat import render as render_chat
    from tkc.catalog.registry import lookup, template_text
    from tkc.catalog.registry import templates as load
    from tkc.schema.diagnostics import CompileError

    try:
        meta = lookup(load(), template, "chat template")
    except CompileError as exc:
        print(f"tkc: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    try:
        conv = load_conversation(conversation)
    except BadConversation as exc:
        print(f"tkc: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    try:
        text = render_chat(template_text(template), conv["messages"], tools=conv.get("tools"),
                           add_generation_prompt=conv.get("add_generation_prompt", True),
                           bos_token=meta.bos_token, eos_token=meta.eos_token, **meta.render_kwargs)
    except TemplateRefused as exc:
        print(f"tkc: template {template!r} refuses this conversation: {exc.reason}", file=sys.stderr)
        raise typer.Exit(1) from None
    except (jinja2.TemplateError, TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        # shapes were checked above; what is left is a field this template reads in its own way
        print(f"tkc: {conversation}: template {template!r} cannot render this conversation: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    sys.stdout.write(text)
    sys.stdout.flush()
