"""`tkc board`: serve the board (a JSON API and a static front end) over a workspace folder; FastAPI imported inside."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def board(
    host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback needs --token-file.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    workspace: Annotated[Path, typer.Option(help="The folder of recipes, datasets and bundles the board may "
                                                 "read and write (nothing outside it).")] = Path("."),
    token_file: Annotated[Path | None, typer.Option(help="File holding the access token (first line, at least 16 "
                                                         "characters); every API route then needs it.")] = None,
) -> None:
    """A browser workflow over a workspace: edit and validate recipes, compile and review bundles, run, stop and
    resume them with a live log and loss chart, chat with and export a trained stage (docs/BOARD.md)."""
    from tkc.board.security import BadToken, read_token

    try:
        token = read_token(token_file, host)
    except BadToken as exc:
        print(f"tkc board: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    if not workspace.is_dir():
        print(f"tkc board: --workspace {workspace} is not a folder", file=sys.stderr)
        raise typer.Exit(2)
    if not 0 < port < 65536:
        print(f"tkc board: --port {port} is not a TCP port", file=sys.stderr)
        raise typer.Exit(2)
    try:
        import uvicorn

        from tkc.board.app import create_app
    except ImportError as exc:
        print(f"tkc board: needs FastAPI and uvicorn: pip install 'tkc[board]' ({exc})", file=sys.stderr)
        raise typer.Exit(2) from None
    app = create_app(workspace, token=token, host=host, port=port)
    shown = f"[{host}]" if ":" in host else host
    print(f"tkc board: http://{shown}:{port}/ over {workspace.resolve()}"
          + (" (token required)" if token else ""), file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
    except OSError as exc:
        print(f"tkc board: cannot bind {host}:{port}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
