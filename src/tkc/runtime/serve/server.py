"""Start `tkc serve`: refuse an unsafe bind, read the API key, load the stage, run uvicorn until stopped."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tkc.runtime.serve.app import Limits


class ServeRefused(ValueError):
    """A setting `tkc serve` refuses before loading anything (the CLI prints it, exit 2)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


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


def serve(bundle: Path, *, stage: str | None, host: str, port: int, api_key_file: Path | None,
          source_root: Path | None, engine: str, limits: Limits, log=print) -> None:
    import uvicorn

    from tkc.runtime.serve.app import build_app
    from tkc.runtime.serve.backend import load_backend

    key = read_api_key(api_key_file, host)
    backend = load_backend(bundle, stage, source_root, engine)
    app = build_app(backend, limits, key)
    log(f"tkc serve: {backend.model_id} on http://{host}:{port}/v1 "
        f"({'API key required' if key else 'no API key: loopback only'})")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    finally:
        backend.close()
