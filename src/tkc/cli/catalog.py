"""`tkc catalog`: list chat templates, model families and hardware profiles; render a conversation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

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


@app.command()
def render(
    template: Annotated[str, typer.Argument(help="Template id.")],
    conversation: Annotated[Path, typer.Argument(help="JSON with messages, optional tools, add_generation_prompt.")],
) -> None:
    """Print exactly the rendered text (nothing added); exit 1 with the reason if the template refuses."""
    from tkc.catalog.chat import TemplateRefused
    from tkc.catalog.chat import render as render_chat
    from tkc.catalog.registry import lookup, template_text
    from tkc.catalog.registry import templates as load
    from tkc.schema.diagnostics import CompileError

    try:
        meta = lookup(load(), template, "chat template")
    except CompileError as exc:
        print(f"tkc: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    conv = json.loads(conversation.read_text(encoding="utf-8"))
    try:
        text = render_chat(template_text(template), conv["messages"], tools=conv.get("tools"),
                           add_generation_prompt=conv.get("add_generation_prompt", True),
                           bos_token=meta.bos_token, eos_token=meta.eos_token, **meta.render_kwargs)
    except TemplateRefused as exc:
        print(f"tkc: template {template!r} refuses this conversation: {exc.reason}", file=sys.stderr)
        raise typer.Exit(1) from None
    sys.stdout.write(text)
    sys.stdout.flush()
