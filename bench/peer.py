"""Create the peer's private venv (bench/.peer/venv, gitignored) with LLaMA-Factory 0.9.5 from the registry.

    .venv/bin/python bench/peer.py            # idempotent; --force rebuilds

Pins: bench/peer-lock.txt (a `pip freeze` of a working install; llamafactory==0.9.5, torch==2.13.0+cpu,
transformers==5.6.0 — the newest transformers that release accepts). Nothing of the peer enters the project;
the benchmarks drive it only through `llamafactory-cli train cfg.yaml`.

Workaround, applied inside the peer venv only (documented in BENCHMARKS.md): the registry's torchvision and
torchaudio builds do not load beside CPU torch 2.13.0 (`operator torchvision::nms does not exist`,
`Could not load this library: .../_torchaudio.abi3.so`), and LLaMA-Factory imports torchaudio even for
text-only training. So torchvision is uninstalled and torchaudio's native libraries are renamed to
`*.so.disabled`; torchaudio then imports as a pure-Python package without its extension, which text-only
runs never call.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEER = BENCH / ".peer"
VENV = PEER / "venv"
LOCK = BENCH / "peer-lock.txt"
PEER_VERSION = "0.9.5"
CLI = VENV / "bin" / "llamafactory-cli"
PY = VENV / "bin" / "python"


def _sh(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def apply_workaround() -> None:
    """Uninstall torchvision and disable torchaudio's native libraries (peer venv only)."""
    site = next((VENV / "lib").glob("python3*/site-packages"))
    if (site / "torchvision").exists():
        _sh(PY, "-m", "pip", "uninstall", "-y", "-q", "torchvision")
    for so in sorted((site / "torchaudio" / "lib").glob("*.so")):
        so.rename(so.with_name(so.name + ".disabled"))
        print(f"disabled {so.relative_to(PEER)}")


def healthy() -> bool:
    if not CLI.exists():
        return False
    probe = "import llamafactory, torch, transformers, torchaudio; print(llamafactory.__version__)"
    r = subprocess.run([str(PY), "-c", probe], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == PEER_VERSION


def versions() -> dict[str, str]:
    code = (
        "import json, llamafactory, torch, transformers, peft, trl, datasets, accelerate;"
        "print(json.dumps({m.__name__: m.__version__ for m in "
        "(llamafactory, torch, transformers, peft, trl, datasets, accelerate)}))"
    )
    r = subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=True)
    import json

    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure(force: bool = False) -> Path:
    """Build the peer venv if it is missing or broken; return the path of llamafactory-cli."""
    if not force and healthy():
        return CLI
    if VENV.exists():
        shutil.rmtree(VENV)
    PEER.mkdir(parents=True, exist_ok=True)
    _sh(sys.executable, "-m", "venv", VENV)
    # torch first, alone and pinned: an open range would pull a multi-GB CUDA build.
    _sh(PY, "-m", "pip", "install", "-q", "torch==2.13.0")
    _sh(PY, "-m", "pip", "install", "-q", "-r", LOCK)
    apply_workaround()
    if not healthy():
        raise SystemExit("peer venv built but llamafactory does not import; see the output above")
    return CLI


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild the venv from scratch")
    ap.add_argument(
        "--workaround-only", action="store_true", help="only (re)apply the torchaudio/torchvision fix"
    )
    a = ap.parse_args()
    if a.workaround_only:
        apply_workaround()
    else:
        print(ensure(a.force))
        print(versions())
