"""The board's FastAPI app: security middleware, the JSON API (docs/BOARD.md) and the static front end."""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tkc.board import security
from tkc.board.runs import RunManager
from tkc.board.security import BoardError

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 4 << 20
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
log = logging.getLogger("tkc.board")


def _error(exc: BoardError, workspace: Path | None = None) -> JSONResponse:
    body = security.scrub(exc.body(), workspace) if workspace is not None else exc.body()
    return JSONResponse(body, status_code=exc.status)


class BodyLimit:
    """Caps the bytes a request body actually delivers (chunked bodies carry no Content-Length): the body is read
    here, at most MAX_BODY_BYTES + 1 bytes of it, and replayed to the app; more is a 413 before any route runs."""

    def __init__(self, app: Any, workspace: Path):
        self.app, self.workspace = app, workspace

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                refused = BoardError(413, "too_large", f"request bodies are at most {MAX_BODY_BYTES} bytes")
                return await _error(refused)(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect, as the server's receive does
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _guard(request: Request, token: str | None, hosts: set[str], port: int | None) -> BoardError | None:
    """The first rule the request breaks: Host (rebinding), body size, token, cross-site; None when it passes."""
    if not security.host_ok(request.headers.get("host", ""), hosts, port):
        return BoardError(421, "host", "the Host header is not this board's address")
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return BoardError(413, "too_large", f"request bodies are at most {MAX_BODY_BYTES} bytes")
    path = request.url.path
    open_route = (request.method, path) in security.OPEN_ROUTES or (request.method == "GET"
                                                                     and path.startswith("/static/"))
    if not open_route and not security.token_ok(token, request.headers, request.cookies):
        return BoardError(401, "auth", "this board needs its token: 'Authorization: Bearer TOKEN' or log in")
    problem = security.csrf_problem(request.method, request.headers)
    return BoardError(403, "csrf", problem) if problem else None


def _install_guards(app: FastAPI, root: Path, token: str | None, host: str, port: int | None) -> None:
    hosts = security.allowed_hosts(host, port)
    app.add_middleware(BodyLimit, workspace=root)  # inside the guard: Host, token and CSRF are checked first

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        refused = _guard(request, token, hosts or set(), port)
        if refused is not None:
            return _error(refused)
        try:
            response = await call_next(request)
        except BoardError as exc:
            return _error(exc, root)
        except Exception as exc:  # noqa: BLE001 - never a 500 with a traceback: one line, logged here
            log.exception("board request failed")
            return _error(BoardError(400, "failed", f"{type(exc).__name__}: {exc}"), root)
        response.headers.update({"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer",
                                 "Cache-Control": "no-store"})
        return response

    @app.exception_handler(BoardError)
    async def board_error(request: Request, exc: BoardError) -> JSONResponse:
        return _error(exc, root)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return _error(BoardError(400, "bad_request", f"{field}: {first.get('msg', 'invalid request')}",
                                 field=field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "not_allowed"}.get(exc.status_code, "bad_request")
        return _error(BoardError(exc.status_code, code, str(exc.detail)))


def _static_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return Response("<!doctype html><title>tkc board</title><p>the front end is not installed",
                            media_type="text/html")
        return FileResponse(page, media_type="text/html")

    @app.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> Response:
        root = STATIC.resolve()
        target = security.workspace_path(root, name, "path") if root.is_dir() else root / "missing"
        if not target.is_file():
            raise BoardError(404, "not_found", f"no static file {name!r}")
        kind = "text/javascript" if target.suffix in (".js", ".mjs") else mimetypes.guess_type(target.name)[0]
        return FileResponse(target, media_type=kind or "application/octet-stream")


def create_app(workspace_dir: Path, *, token: str | None, host: str, port: int | None = None) -> FastAPI:
    """The board over `workspace_dir`; `port` (when known) makes the Host check exact."""
    from tkc.board import api

    root = Path(workspace_dir).resolve()
    app = FastAPI(title="tkc board", docs_url=None, redoc_url=None, openapi_url=None)
    _install_guards(app, root, token, host, port)
    _static_routes(app)
    api.add_routes(app, root, token, RunManager(root))
    return app

