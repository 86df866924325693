"""The JSON API routes (docs/BOARD.md): thin wrappers over workspace, bundles, runs and runtime_ops."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Request, Response
from fastapi.responses import StreamingResponse

import tkc
from tkc.board import bundles, workspace
from tkc.board.runs import RunManager
from tkc.board.security import COOKIE, BoardError, token_ok

JsonBody = Body(...)


def _info_routes(app: FastAPI, root: Path, token: str | None) -> None:
    @app.get("/api/info")
    def info(request: Request) -> dict[str, Any]:
        return {"version": tkc.__version__, "workspace": root.name, "token_required": token is not None,
                "authenticated": token_ok(token, request.headers, request.cookies)}

    @app.post("/api/login")
    def login(response: Response, body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        given = body.get("token")
        if token is None:
            return {"ok": True}
        if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                                 token.encode("utf-8")):
            raise BoardError(401, "auth", "wrong token")
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return {"ok": True}

    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        from tkc.schema.top import json_schema

        return json_schema()

    @app.get("/api/catalog")
    def catalog() -> dict[str, Any]:
        from tkc.catalog import registry

        return {"families": [{"id": k, "description": f.description, "template": f.template}
                             for k, f in sorted(registry.families().items())],
                "templates": [{"id": k, "description": t.description, "supports_tools": t.supports_tools}
                              for k, t in sorted(registry.templates().items())],
                "profiles": [{"id": k, "accelerator": p.accelerator, "memory_gb": p.memory_gb}
                             for k, p in sorted(registry.profiles().items())]}


def _recipe_routes(app: FastAPI, root: Path) -> None:
    @app.get("/api/files")
    def files(kind: str = "") -> dict[str, Any]:
        return {"files": workspace.list_files(root, kind)}

    @app.get("/api/recipe")
    def recipe(path: str | None = None) -> dict[str, Any]:
        return workspace.read_recipe(root, path)

    @app.put("/api/recipe")
    def save(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        written = workspace.write_recipe(root, body.get("path"), workspace.text_field(body))
        return {"ok": True, "path": written.relative_to(root).as_posix()}

    @app.post("/api/validate")
    def validate(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        return workspace.validate(root, body.get("path"), workspace.text_field(body))

    @app.post("/api/yaml")
    def to_yaml(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        return {"text": workspace.to_yaml(body.get("data"))}

    @app.get("/api/dataset/preview")
    def preview(path: str | None = None, n: int = 5) -> dict[str, Any]:
        return workspace.preview(root, path, n)

    @app.post("/api/dataset/inspect")
    def inspect(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        from tkc.board import runtime_ops

        return runtime_ops.inspect(root, body)


def _bundle_routes(app: FastAPI, root: Path) -> None:
    @app.post("/api/compile")
    def compile_(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        return bundles.compile_bundle(root, body)

    @app.get("/api/bundle")
    def bundle(path: str | None = None) -> dict[str, Any]:
        return bundles.bundle_view(root, path)

    @app.get("/api/diff")
    def diff(a: str | None = None, b: str | None = None) -> dict[str, Any]:
        return bundles.bundle_diff(root, a, b)

    @app.post("/api/chat")
    def chat(body: dict[str, Any] = JsonBody) -> StreamingResponse:
        from tkc.board import runtime_ops

        return StreamingResponse(runtime_ops.open_chat(root, body), media_type="text/event-stream")

    @app.post("/api/export")
    def export(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        from tkc.board import runtime_ops

        return runtime_ops.export(root, body)


def _run_routes(app: FastAPI, runs: RunManager) -> None:
    @app.post("/api/runs")
    def start(body: dict[str, Any] = JsonBody) -> dict[str, Any]:
        return {"id": runs.start(body.get("bundle"))}

    @app.get("/api/runs")
    def listing() -> dict[str, Any]:
        return {"runs": runs.list()}

    @app.get("/api/runs/{run_id}")
    def one(run_id: str) -> dict[str, Any]:
        return runs.get(run_id)

    @app.post("/api/runs/{run_id}/stop")
    def stop(run_id: str) -> dict[str, Any]:
        runs.stop(run_id)
        return {"ok": True}

    @app.post("/api/runs/{run_id}/resume")
    def resume(run_id: str) -> dict[str, Any]:
        return {"id": runs.resume(run_id)}

    @app.get("/api/runs/{run_id}/log")
    def log(run_id: str, offset: int = 0) -> dict[str, Any]:
        return runs.log(run_id, offset)

    @app.get("/api/runs/{run_id}/steps")
    def steps(run_id: str, stage: str | None = None) -> dict[str, Any]:
        return runs.steps(run_id, stage)


def add_routes(app: FastAPI, root: Path, token: str | None, runs: RunManager) -> None:
    _info_routes(app, root, token)
    _recipe_routes(app, root)
    _bundle_routes(app, root)
    _run_routes(app, runs)
