"""Start a real board (uvicorn on a free loopback port, in a background thread) for the board tests.

    base_url, stop = start_board(workspace, token=None)
    ...                      # requests/httpx/a browser against base_url (Host 127.0.0.1:<port>)
    stop()
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_board(workspace: Path, token: str | None = None, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """A board over `workspace`, serving until stop_fn() is called; base_url has no trailing slash."""
    import uvicorn

    from tkc.board.app import create_app

    port = free_port()
    app = create_app(Path(workspace), token=token, host=host, port=port)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True, name="tkc-board-test")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the board did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://{host}:{port}", stop
