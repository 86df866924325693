"""`tkc serve`: an OpenAI-compatible HTTP API over a bundle's stage (the runtime and FastAPI imported inside)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by tkc compile (and run).")],
    stage: Annotated[str | None, typer.Option(help="Serve this stage's model (an eval/infer stage: the model it "
                                                   "reads; an rm stage: POST /v1/score). Default: the last stage "
                                                   "that wrote a model, else the base model.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback needs --api-key-file.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_file: Annotated[Path | None, typer.Option(help="File holding the API key (one line); every route "
                                                           "then needs 'Authorization: Bearer KEY'.")] = None,
    engine: Annotated[str, typer.Option(help="Inference engine: hf or vllm.")] = "hf",
    max_inflight: Annotated[int, typer.Option(help="Requests running or waiting at once; more get 429.")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1 << 20,
    max_n: Annotated[int, typer.Option(help="Most choices (n) per request.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per choice.")] = 4096,
    source_root: Annotated[Path | None, typer.Option(help="Where the bundle's relative model paths resolve "
                                                          "(default: recorded at compile).")] = None,
    allow_media_host: Annotated[list[str] | None, typer.Option(help="A host image_url parts may fetch from over "
                                                                    "http(s) (repeat it; *.example.com for its "
                                                                    "subdomains). Default: none, so only data URLs "
                                                                    "and paths under the bundle's media root; "
                                                                    "private and loopback addresses are always "
                                                                    "refused.")] = None,
) -> None:
    """Serve a bundle's model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models,
    /v1/score for rm stages, /health), with the bundle's template, stop tokens and generation defaults."""
    from tkc.bundle.plan import PlanError
    from tkc.runtime.run import hidden_packages, unused_packages

    try:
        from tkc.runtime.serve.app import Limits
    except ImportError as e:  # the serve extra is not installed
        print(f"tkc serve: needs the serve extra (FastAPI, uvicorn): pip install 'tkc[serve]' ({e})",
              file=sys.stderr)
        raise typer.Exit(2) from None
    from tkc.runtime.serve.server import ServeRefused, check_bind, read_api_key
    from tkc.runtime.serve.server import serve as run_server

    limits = Limits(max_body_bytes=max_body_bytes, max_n=max_n, max_tokens=max_tokens, max_inflight=max_inflight)
    try:
        read_api_key(api_key_file, host)  # refused before anything loads
        check_bind(host, port)
        plan = _plan_or_none(bundle)
        with hidden_packages(unused_packages(plan)):
            run_server(bundle, stage=stage, host=host, port=port, api_key_file=api_key_file,
                       source_root=source_root, engine=engine, limits=limits,
                       log=lambda s: print(s, file=sys.stderr, flush=True),
                       media_hosts=tuple(allow_media_host or ()))
    except (ServeRefused, PlanError, KeyError, RuntimeError, ValueError) as e:
        print(f"tkc serve: {e.args[0] if e.args else e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _plan_or_none(bundle: Path):
    from tkc.bundle.plan import PlanError, load_plan

    try:
        return load_plan(bundle)
    except PlanError:
        return None
