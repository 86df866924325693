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


def _pinned(meta: Any) -> tuple[str, str]:
    """(vendor model, pinned copy as repo@short-commit), or what the template is instead."""
    if meta.vendor is not None:
        return meta.vendor.model, f"{meta.vendor.repo}@{meta.vendor.commit[:7]}"
    return "", "written by tkc" if meta.source.startswith("written by tkc") else "vendor copy not pinned"


@app.command()
def templates() -> None:
    """Chat templates: id, the vendor model and the pinned public copy the text was taken from, tools, system."""
    from tkc.catalog.registry import templates as load

    rows = [[tid, *_pinned(m), "yes" if m.supports_tools else "", "yes" if m.supports_system else "no"]
            for tid, m in sorted(load().items())]
    _table(f"{len(rows)} chat templates", ["id", "vendor model", "source", "tools", "system"], rows)


def _verified(fam: Any) -> str:
    if fam.verified.smoke:
        return f"smoke: {fam.verified.smoke}"
    return "remote code: template parity only" + (f" ({fam.verified.note})" if fam.verified.note else "")


def _moe(fam: Any) -> str:
    if fam.moe is None:
        return ""
    return f"experts {fam.moe.experts_path or '?'}: " + ("LoRA" if fam.moe.lora_experts else "frozen")


@app.command()
def families() -> None:
    """Model families: detection key, default template, how each is verified, LoRA targets, mixture of experts."""
    from tkc.catalog.registry import families as load

    rows = [[fid, ", ".join(f.model_types), f.template, _verified(f), ", ".join(f.lora_targets), _moe(f)]
            for fid, f in sorted(load().items())]
    _table(f"{len(rows)} model families", ["id", "model_type", "template", "verified", "lora targets", "MoE"], rows)


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


RENDER_MODES = ("raw", "inference", "training")
SPAN_OPEN, SPAN_CLOSE = "\u27e6", "\u27e7"   # ⟦ ⟧ around trained characters (--show-spans)


def _note(text: str) -> None:
    print(f"tkc: {text}", file=sys.stderr)


def _inference_text(tpl: Any, conv: dict[str, Any]) -> str:
    """The vendor's generation prompt: the conversation up to the assistant's turn; a trailing assistant turn
    is the answer, so it is left out."""
    messages = list(conv["messages"])
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
        _note("mode inference: the final assistant turn is the answer, left out of the prompt")
    if conv.get("add_generation_prompt") is False:
        _note("mode inference: add_generation_prompt=false in the file is ignored (the prompt always ends "
              "with the assistant's header)")
    return str(tpl.prompt(messages, tools=conv.get("tools")))


def _training_text(tpl: Any, conv: dict[str, Any], show_spans: bool) -> str:
    """The text tkc trains on, through the SFT data encoder's own call (ChatTemplate.spans); with show_spans the
    trained characters (each assistant turn with its end-of-turn token) sit between the span markers."""
    text, spans = tpl.spans(conv["messages"], conv.get("tools"))
    if not spans:
        raise BadConversation("mode training: no assistant turn to train on")
    if not show_spans:
        return str(text)
    out, at = [], 0
    for start, end, _ in spans:
        out += [text[at:start], SPAN_OPEN, text[start:end], SPAN_CLOSE]
        at = end
    return "".join([*out, text[at:]])


def _rendered(template: str, meta: Any, conv: dict[str, Any], mode: str, show_spans: bool) -> str:
    from tkc.bundle.chat import ChatTemplate, reads_clock
    from tkc.catalog.registry import template_text
    from tkc.schema.template import DEFAULT_NOW

    text = template_text(template)
    # training and inference read the instant a bundle's renders read by default (template.now); raw, the clock
    now = DEFAULT_NOW if mode != "raw" and reads_clock(text) else None
    tpl = ChatTemplate(text, meta.bos_token, meta.eos_token, tuple(meta.stop_tokens), dict(meta.render_kwargs), now)
    if mode == "inference":
        return _inference_text(tpl, conv)
    if mode == "training":
        return _training_text(tpl, conv, show_spans)
    gen = conv.get("add_generation_prompt", True)
    _note(f"mode raw: rendered as the file says (add_generation_prompt={str(gen).lower()}); "
          "--mode inference or --mode training shows the generation prompt or the trained text")
    return str(tpl.render(conv["messages"], tools=conv.get("tools"), add_generation_prompt=gen))


@app.command()
def render(
    template: Annotated[str, typer.Argument(help="Template id.")],
    conversation: Annotated[Path, typer.Argument(help="JSON with messages, optional tools, add_generation_prompt.")],
    mode: Annotated[str, typer.Option(help="raw: as the file says (add_generation_prompt, default true); "
                                           "inference: the generation prompt (a final assistant turn left out); "
                                           "training: the text tkc trains on, end-of-turn token included.")] = "raw",
    show_spans: Annotated[bool, typer.Option("--show-spans", help="With --mode training: put the trained "
                                             f"characters between {SPAN_OPEN} and {SPAN_CLOSE}.")] = False,
) -> None:
    """Print exactly the rendered text (nothing added); exit 1 with the reason if the template refuses."""
    import jinja2

    from tkc.bundle.chat import SpanError, TemplateRefused
    from tkc.catalog.registry import lookup
    from tkc.catalog.registry import templates as load
    from tkc.schema.diagnostics import CompileError

    try:
        if mode not in RENDER_MODES:
            raise BadConversation(f"--mode {mode!r}: expected one of {', '.join(RENDER_MODES)}")
        if show_spans and mode != "training":
            raise BadConversation("--show-spans marks the trained text: it needs --mode training")
        meta = lookup(load(), template, "chat template")
        text = _rendered(template, meta, load_conversation(conversation), mode, show_spans)
    except (CompileError, BadConversation) as exc:
        print(f"tkc: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except TemplateRefused as exc:
        print(f"tkc: template {template!r} refuses this conversation: {exc.reason}", file=sys.stderr)
        raise typer.Exit(1) from None
    except (jinja2.TemplateError, SpanError, TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        # shapes were checked above; what is left is a field this template reads in its own way
        print(f"tkc: {conversation}: template {template!r} cannot render this conversation: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    sys.stdout.write(text)
    sys.stdout.flush()
