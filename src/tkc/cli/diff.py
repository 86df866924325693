"""`tkc diff`: what changed between two bundles, by meaning; exit 1 when plans or sources differ, 2 on bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def diff(
    a: Annotated[Path, typer.Argument(help="First bundle.")],
    b: Annotated[Path, typer.Argument(help="Second bundle.")],
    plain: Annotated[bool, typer.Option(help="Plain text (no colour), e.g. for code review.")] = False,
) -> None:
    """Compare resolved values with provenance, data hashes, environment pins and scripts."""
    from tkc.bundle.diff import diff_bundles, render_diff

    for bundle in (a, b):
        if not (bundle / "manifest.json").is_file() or not (bundle / "resolved.json").is_file():
            typer.echo(f"tkc diff: {bundle} is not a tkc bundle (no manifest.json / resolved.json)", err=True)
            raise typer.Exit(2)
    try:
        result = diff_bundles(a, b)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"tkc diff: cannot read a bundle: {exc}; run `tkc verify` on each", err=True)
        raise typer.Exit(2) from None
    text = render_diff(result)
    from rich.console import Console

    console = Console()
    if plain or not console.is_terminal:  # a pipe or log gets every line whole (rich crops at 80 columns there)
        typer.echo(text, nl=False)
    else:
        from rich.syntax import Syntax

        console.print(Syntax(text, "diff", theme="ansi_dark", background_color="default", word_wrap=True))
    raise typer.Exit(0 if result.same else 1)
