"""The board's rules in one place: token, Host header, CSRF header/Origin, workspace-only paths, JSON errors."""

from __future__ import annotations

import hmac
import re
from pathlib import Path, PurePosixPath
from typing import Any

from tkc.hosts import is_loopback

MIN_TOKEN_CHARS = 16
COOKIE = "tkc_board"
CSRF_HEADER = "x-tkc-board"
MAX_PATH_BYTES, MAX_NAME_BYTES = 1024, 255
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# reachable without the token: the page and its assets load, then ask for it
OPEN_ROUTES = frozenset({("GET", "/"), ("GET", "/api/info"), ("POST", "/api/login")})


class BoardError(Exception):
    """A refused request: HTTP status, a stable code and a message; `extra` goes into the JSON error too."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "code": self.code, **self.extra}}


class BadToken(ValueError):
    """--token-file missing, unreadable or too short (the CLI exits 2 with this message)."""




def read_token(token_file: Path | None, host: str) -> str | None:
    """The token (first line, stripped); None for a loopback bind without a file. BadToken otherwise."""
    if token_file is None:
        if is_loopback(host):
            return None
        raise BadToken(f"--host {host} is not loopback: it needs --token-file FILE (a token of at least "
                       f"{MIN_TOKEN_CHARS} characters); refusing to serve the workspace unauthenticated")
    try:
        lines = token_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadToken(f"--token-file {token_file}: cannot read it ({exc})") from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS:
        raise BadToken(f"--token-file {token_file}: the token must be at least {MIN_TOKEN_CHARS} characters")
    return token


def allowed_hosts(host: str, port: int | None) -> set[str] | None:
    """Host header values accepted (DNS-rebinding defence); None accepts any port (port unknown)."""
    names = {"127.0.0.1", "localhost", "[::1]"} if is_loopback(host) else {f"[{host}]" if ":" in host else host}
    if port is None:
        return names
    return {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())


def host_ok(header: str, allowed: set[str], port: int | None) -> bool:
    header = header.lower()
    if port is None:
        header = re.sub(r":\d+$", "", header)
    return header in allowed


def token_ok(expected: str | None, headers: Any, cookies: Any) -> bool:
    if expected is None:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def csrf_problem(method: str, headers: Any) -> str | None:
    """Why a state-changing request looks cross-site, or None."""
    if method not in STATE_CHANGING:
        return None
    if headers.get(CSRF_HEADER) != "1":
        return "a state-changing request needs the header 'X-TKC-Board: 1'"
    own = f"http://{headers.get('host', '').lower()}"
    origin = headers.get("origin")
    if origin is not None and origin.lower() != own:
        return f"Origin {origin!r} is not this board's origin"
    referer = headers.get("referer")
    if origin is None and referer is not None and referer.lower().split("?")[0].rstrip("/") != own \
            and not referer.lower().startswith(own + "/"):
        return "the Referer is not this board's page"
    return None


def workspace_path(workspace: Path, value: Any, field: str) -> Path:
    """A workspace-relative POSIX path, resolved (symlinks followed) and checked to stay inside the workspace."""
    def refuse(why: str) -> BoardError:
        return BoardError(400, "path", f"{field}: {why}", field=field)

    if not isinstance(value, str) or not value.strip():
        raise refuse("a workspace-relative path is required")
    if "\x00" in value or "\\" in value:
        raise refuse("NUL and backslash are not allowed in a path")
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", value):
        raise refuse("must be relative to the workspace")
    if ".." in PurePosixPath(value).parts:
        raise refuse("'..' is not allowed")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES or any(
            len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in PurePosixPath(value).parts):
        raise refuse(f"too long (at most {MAX_PATH_BYTES} bytes, {MAX_NAME_BYTES} per name)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise refuse("control characters are not allowed in a path")
    root = workspace.resolve()
    try:
        target = (root / value).resolve()
    except (OSError, RuntimeError, ValueError):
        raise refuse("cannot be resolved") from None
    if not target.is_relative_to(root):
        raise refuse("resolves outside the workspace")
    return target


def relative(workspace: Path, path: Path) -> str:
    return path.resolve().relative_to(workspace.resolve()).as_posix()


_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/[^\s'\"(),;:]+")


def scrub(value: Any, workspace: Path) -> Any:
    """`value` (a JSON body) with absolute paths hidden: the workspace's as workspace-relative ('.' for itself),
    any other as '<outside the workspace>', so an answer never tells where the files lie."""
    if isinstance(value, dict):
        return {k: scrub(v, workspace) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, workspace) for v in value]
    if not isinstance(value, str):
        return value
    for root in dict.fromkeys((str(workspace.resolve()), str(workspace))):
        value = value.replace(root + "/", "").replace(root, ".")
    return _ABSOLUTE.sub("<outside the workspace>", value)
