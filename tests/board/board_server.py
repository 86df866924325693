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


REPO = Path(__file__).resolve().parents[2]
HEADERS = {"X-TKC-Board": "1"}   # what every state-changing request carries (the CSRF rule)
TOKEN = "s3cret-token-of-32-characters-xx"
TINY_RECIPE = """\
# a tiny LoRA SFT run on the tiny Qwen2 model (CPU, a fraction of a second a step)
extends: [base/tiny_cpu.yaml]
name: tiny
data:
  datasets:
    small_sft: {path: data/small_sft.jsonl, format: alpaca}
stages:
  - kind: sft
    name: sft
    datasets: [small_sft]
train: {max_steps: %(steps)d, save_steps: %(save)d, global_batch_size: 4}
launch: {cpu_threads: 1}
"""


def make_workspace(root: Path, steps: int = 6, save: int = 2, rows: int = 64) -> Path:
    """A workspace holding recipes/tiny.yaml (one LoRA sft stage), its base, the tiny model and a small dataset."""
    import shutil

    recipes = root / "recipes"
    (recipes / "data").mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", recipes / "assets" / "tiny-qwen2")
    shutil.copytree(REPO / "recipes" / "base", recipes / "base")
    for name in ("arith_pref.jsonl", "arith_kto.jsonl"):  # the base names them
        shutil.copy(REPO / "recipes" / "data" / name, recipes / "data" / name)
    lines = (REPO / "recipes" / "data" / "arith_sft.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    (recipes / "data" / "arith_sft.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (recipes / "data" / "small_sft.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (recipes / "tiny.yaml").write_text(TINY_RECIPE % {"steps": steps, "save": save}, encoding="utf-8")
    return root
