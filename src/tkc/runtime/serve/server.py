"""Start `tkc serve`: refuse an unsafe bind, read the API key, load the stage, run uvicorn until stopped."""

from __future__ import annotations

import socket
from pathlib import Path

from tkc.hosts import is_loopback
from tkc.runtime.serve.app import Limits


class ServeRefused(ValueError):
    """A setting `tkc serve` refuses before loading anything (the CLI prints it, exit 2)."""




def read_api_key(path: Path | None, host: str) -> str | None:
    """The key in `path` (one line, surrounding whitespace dropped); a non-loopback bind must have one."""
    if path is None:
        if not is_loopback(host):
            raise ServeRefused(f"--host {host} is reachable from other machines: give --api-key-file (a file "
                               "holding the key clients send as 'Authorization: Bearer KEY'), or bind 127.0.0.1")
        return None
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ServeRefused(f"--api-key-file {path}: cannot read it ({e})") from None
    if len(key) < 16 or any(c.isspace() for c in key):
        raise ServeRefused(f"--api-key-file {path}: the key must be one line of at least 16 characters "
                           "without spaces")
    return key


def check_bind(host: str, port: int) -> None:
    """Refuse a port out of range or an address already taken, before minutes go into loading the model."""
    if not 1 <= port <= 65535:
        raise ServeRefused(f"--port {port}: a TCP port is 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            raise ServeRefused(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(bundle: Path, *, stage: str | None, host: str, port: int, api_key_file: Path | None,
          source_root: Path | None, engine: str, limits: Limits, log=print,
          media_hosts: tuple[str, ...] = ()) -> None:
    import uvicorn

    from tkc.runtime.serve.app import build_app
    from tkc.runtime.serve.backend import load_backend

    key = read_api_key(api_key_file, host)
    check_bind(host, port)
    backend = load_backend(bundle, stage, source_root, engine, media_hosts)
    app = build_app(backend, limits, key)
    log(f"tkc serve: {backend.model_id} on http://{host}:{port}/v1 "
        f"({'API key required' if key else 'no API key: loopback only'})")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    finally:
        backend.close()
