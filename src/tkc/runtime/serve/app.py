"""The FastAPI app of `tkc serve`: the guard (API key, body size), OpenAI-style errors, admission, the routes.

Security, in the order a request meets it:
* the API key (when the server has one) on every route, /health and /openapi.json included: a probe sends the
  header too. Compared with `hmac.compare_digest`; a wrong or missing key is 401 before the body is read;
* the body: over `max_body_bytes` is 413, read no further; not JSON, not an object, wrong types or a badly
  ordered conversation is 400 (pydantic, strict), never a 500;
* limits that need no model: n, max_tokens, the stop list, prompt tokens plus max_tokens against the context
  (400 with both numbers), a request chat template, media parts;
* admission: at most `max_inflight` requests running or waiting; one more is 429 with Retry-After.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tkc.runtime.serve.backend import Backend
from tkc.runtime.serve.protocol import ApiError, ScoreRequest, error_body


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_n: int = 8
    max_tokens: int = 4096      # per choice; the context may allow fewer
    max_stop: int = 4
    max_stop_chars: int = 256
    max_inflight: int = 64      # running plus waiting requests; more is 429
    retry_after_s: int = 1


class Admission:
    """A bounded count of requests in flight (the event loop is one thread: no lock)."""

    def __init__(self, limits: Limits):
        self.limits, self.active = limits, 0

    def enter(self) -> None:
        if self.active >= self.limits.max_inflight:
            raise ApiError(429, f"the server is busy ({self.active} requests in flight, the limit is "
                                f"{self.limits.max_inflight}); retry later", code="rate_limit_exceeded",
                           kind="rate_limit_error", headers={"Retry-After": str(self.limits.retry_after_s)})
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


def _send_error(status: int, body: dict, headers: dict[str, str] | None = None):
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": hdrs}, {"type": "http.response.body",
                                                                                "body": data}


class Guard:
    """ASGI middleware: the API key on every route, then the body read whole (at most max_body_bytes) and replayed
    to the app, so no route ever reads an oversized body."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int):
        self.app, self.key, self.max = app, api_key.encode() if api_key else None, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None:
            given = headers.get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                return await _reply(send, 401, error_body("a valid API key is required (Authorization: Bearer "
                                                          "KEY)", code="invalid_api_key"),
                                    {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max):
            return await _reply(send, 413, self._too_large())
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max:
                return await _reply(send, 413, self._too_large())
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the client's disconnect, which streaming routes watch for

        return await self.app(scope, replay, send)

    def _too_large(self) -> dict:
        return error_body(f"the request body is over the limit of {self.max} bytes", code="request_too_large")


async def _reply(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    start, content = _send_error(status, body, headers)
    await send(start)
    await send(content)


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    # our own checks (value errors) name the problem best; of a union's branches, the first says least
    err = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and not _branch(x)]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    if not loc and err.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return ApiError(400, "the request body must be a JSON object", code="invalid_body")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def _branch(part: object) -> bool:
    """A union branch in an error's location (`str`, `list[ContentPart]`, `function-after[...]`), not a field."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))


def build_app(backend: Backend, limits: Limits, api_key: str | None) -> FastAPI:
    from tkc.runtime.serve import generate

    app = FastAPI(title="tkc serve", version="1", docs_url=None, redoc_url=None)
    app.state.backend, app.state.limits, app.state.admission = backend, limits, Admission(limits)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = _validation_error(exc)
        if err.code == "invalid_body" and "json" not in request.headers.get("content-type", ""):
            err.message = "the request body must be a JSON object sent with Content-Type: application/json"
        return await _api_error(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(error_body(str(exc.detail), param=None, code=code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", kind="server_error",
                                       code="internal_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        engine = backend.engine.stats() if hasattr(backend.engine, "stats") else None
        return {"status": "ok", "model": backend.model_id, "in_flight": app.state.admission.active,
                "engine": engine}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": backend.model_id, "object": "model", "created": 0,
                                            "owned_by": "tkc"}]}

    @app.post("/v1/score")
    async def score(req: ScoreRequest) -> dict:
        check_model(backend, req.model, "score")
        from starlette.concurrency import run_in_threadpool

        app.state.admission.enter()
        try:
            messages = [generate.message_dict(m) for m in req.messages]
            value, tokens = await run_in_threadpool(backend.score, messages)
        finally:
            app.state.admission.leave()
        return {"object": "score", "model": backend.model_id, "created": int(time.time()), "score": value,
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}}

    generate.add_routes(app, backend, limits)
    app.openapi = lambda: _openapi(app, backend, limits)  # type: ignore[method-assign]
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    return app


def _openapi(app: FastAPI, backend: Backend, limits: Limits) -> dict:
    """The schema with this server's own values: the one model id, the n and max_tokens limits."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for name, schema in spec.get("components", {}).get("schemas", {}).items():
            props = schema.get("properties", {})
            if name.endswith("Request") and "model" in props:
                props["model"] = {"type": "string", "enum": [backend.model_id], "title": "Model"}
            for key, top in (("n", limits.max_n), ("max_tokens", limits.max_tokens),
                             ("max_completion_tokens", limits.max_tokens)):
                for branch in props.get(key, {}).get("anyOf", [props.get(key, {})]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = top
        app.openapi_schema = spec
    return app.openapi_schema


def check_model(backend: Backend, model: str, route: str) -> None:
    if model != backend.model_id:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {backend.model_id!r}",
                       param="model", code="model_not_found")
    if route != backend.kind:
        what = ("a reward model: POST /v1/score" if backend.kind == "score"
                else "a generation model: /v1/score needs an rm stage (tkc serve DIR --stage <rm stage>)")
        raise ApiError(400, f"{backend.model_id} is {what}", param="model", code="wrong_route")
