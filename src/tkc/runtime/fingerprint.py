"""Before a multi-process run trains, every rank shows every other its bundle hash and environment; a difference
stops every rank with one message naming the nodes, the field and both values (exit 3 bundle, 4 environment).

Each node verified its own bundle and environment alone; only together can they see that node 1 was given a bundle
compiled with another learning rate, or runs another transformers: ranks that trained on would mix two plans. The
exchange is one all_gather_object over the process group `tkc run` joined, so it waits at most the group's timeout
(TKC_DIST_TIMEOUT_S, from launch.rdzv_timeout_s) for a rank that never arrives.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tkc.runtime.context import EXIT_BUNDLE_CHANGED, EXIT_ENV_MISMATCH, EXIT_FAILED, RunContext
from tkc.runtime.dist import DEFAULT_TIMEOUT_S

DRIVER_FILES = {"nvidia": "/proc/driver/nvidia/version", "amdgpu": "/sys/module/amdgpu/version"}


@dataclass(frozen=True)
class Fingerprint:
    """What must be equal on every rank. `node` is the node rank the launch script was given (TKC_NODE_RANK), else
    torchrun's GROUP_RANK; `env` maps a field (python, torch, cuda, driver, tkc, lockfile, each pinned package) to
    its value here, None when absent; `refused` lists this rank's drift from the lockfile that `tkc run` refuses."""

    rank: int
    node: str
    host: str
    bundle_hash: str
    env: Mapping[str, str | None]
    refused: tuple[str, ...] = field(default=())

    def where(self) -> str:
        return f"node {self.node} (host {self.host})"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the exchange: a rank running another tkc must still be read, and named."""
        return {"rank": self.rank, "node": self.node, "host": self.host, "bundle_hash": self.bundle_hash,
                "env": dict(self.env), "refused": list(self.refused)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fingerprint:
        return cls(int(d.get("rank", -1)), str(d.get("node", "?")), str(d.get("host", "?")),
                   str(d.get("bundle_hash", "?")), dict(d.get("env") or {}), tuple(d.get("refused") or ()))


@dataclass(frozen=True)
class Verdict:
    code: int
    message: str


def environment_facts(lockfile: Path, pins: Sequence[str]) -> dict[str, str | None]:
    """This process's environment: the versions that change results, and the bundle's lockfile digest."""
    import torch

    import tkc

    facts: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None), "driver": _driver_version(), "tkc": tkc.__version__,
        "lockfile sha256": hashlib.sha256(lockfile.read_bytes()).hexdigest() if lockfile.is_file() else None}
    installed = _installed_versions()
    for name in sorted(set(pins) - {"torch"}):
        facts[f"package {name}"] = installed.get(name)
    return facts


def _installed_versions() -> dict[str, str]:
    """{normalized distribution name: version}, one scan of sys.path (the first found wins, as import does)."""
    import importlib.metadata
    import re

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        found.setdefault(name, dist.version)
    return found


def _driver_version() -> str | None:
    """The kernel driver's version, read from the file it publishes (no subprocess, no CUDA context)."""
    import re

    for kind, path in DRIVER_FILES.items():
        try:
            first = Path(path).read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        except OSError:
            continue
        match = re.search(r"\b\d+\.\d+(?:\.\d+)*\b", first)
        return f"{kind} {match.group(0) if match else first.strip()}"
    return None


def local_fingerprint(ctx: RunContext, refused: Sequence[str] = ()) -> Fingerprint:
    env = environment_facts(ctx.bundle_dir / ctx.plan.environment.file, list(ctx.plan.environment.pins))
    node = os.environ.get("TKC_NODE_RANK") or os.environ.get("GROUP_RANK") or "?"
    return Fingerprint(ctx.dist.rank, node, socket.gethostname(), ctx.bundle_hash, env, tuple(refused))


def compare(prints: Sequence[Fingerprint]) -> Verdict | None:
    """None when every rank agrees with rank 0; else the exit code and the message every rank prints."""
    ranks = sorted(prints, key=lambda p: p.rank)
    lines = _differences(ranks, "bundle hash", lambda p: p.bundle_hash)
    code = EXIT_BUNDLE_CHANGED if lines else EXIT_ENV_MISMATCH
    for key in sorted({k for p in ranks for k in p.env}):
        lines += _differences(ranks, key, partial(_env_value, key))
    lines += [f"  {p.where()}, rank {p.rank}: its environment differs from the bundle's pins (env/requirements.lock):"
              f" {'; '.join(p.refused)}" for p in ranks if p.refused]
    if not lines:
        return None
    fix = ("start every node from the same bundle (compile once, copy the directory: manifest.json's bundle_hash "
           "is the same everywhere)" if code == EXIT_BUNDLE_CHANGED else
           "install the bundle's env/requirements.lock on every node (the same versions and drivers everywhere)")
    head = f"the {len(ranks)} ranks of this run do not agree; every rank stops before training (exit {code}):"
    return Verdict(code, "\n".join([head, *lines, f"  fix: {fix}"]))


def _env_value(key: str, p: Fingerprint) -> str | None:
    return p.env.get(key)


def _differences(ranks: Sequence[Fingerprint], name: str, value: Callable[[Fingerprint], str | None]) -> list[str]:
    """One line per value that differs from rank 0's: which nodes (hosts, ranks) have it."""
    ref = value(ranks[0])
    groups: dict[tuple[str, str, str | None], list[int]] = {}
    for p in ranks:
        if value(p) != ref:
            groups.setdefault((p.node, p.host, value(p)), []).append(p.rank)
    return [f"  {name}: {_show(got)} on node {node} (host {host}, rank {_ranks(rs)}), "
            f"but {_show(ref)} on node {ranks[0].node} (host {ranks[0].host}, rank 0)"
            for (node, host, got), rs in groups.items()]


def _show(value: str | None) -> str:
    return "absent" if value is None else repr(value)


def _ranks(ranks: list[int]) -> str:
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}" if ranks == list(
        range(ranks[0], ranks[-1] + 1)) else ", ".join(map(str, ranks))


def check_ranks_agree(ctx: RunContext, refused: Sequence[str] = ()) -> int | None:
    """All-gather every rank's fingerprint; None to go on, else the exit code (every rank decides alike).

    A one-process run has nothing to compare. A rank that never arrives ends the wait at the group's timeout.
    """
    if not ctx.dist.enabled:
        return None
    import torch.distributed as dist

    gathered: list[dict[str, Any] | None] = [None] * ctx.dist.world_size
    try:
        dist.all_gather_object(gathered, local_fingerprint(ctx, refused).to_dict())
    except RuntimeError as e:
        _say(ctx, "the ranks could not compare their bundles and environments: " + join_failed(e))
        return EXIT_FAILED
    prints = [Fingerprint.from_dict(d) for d in gathered if d is not None]
    verdict = compare(prints)
    if verdict is None:
        _say(ctx, agreed(prints))
        return None
    _say(ctx, verdict.message)
    return verdict.code


def agreed(prints: Sequence[Fingerprint]) -> str:
    """Where rank 0 runs: the rendezvous orders nodes by host name, not by node rank, and rank 0 writes outputs/."""
    first = min(prints, key=lambda p: p.rank)
    nodes = len({(p.node, p.host) for p in prints})
    return (f"{len(prints)} ranks on {nodes} node(s) run bundle {first.bundle_hash[:12]} in the same environment; "
            f"rank 0, which writes outputs/ and checkpoints, runs on {first.where()}")


def join_failed(error: BaseException) -> str:
    """An error from joining the process group or exchanging over it, with what a timeout there means."""
    timeout = os.environ.get("TKC_DIST_TIMEOUT_S")
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "timeout" not in str(error).lower() and "timed out" not in str(error).lower():
        return text
    limit = f"TKC_DIST_TIMEOUT_S={timeout} s" if timeout else f"the default {DEFAULT_TIMEOUT_S:.0f} s"
    return (f"{text.rstrip('.')}: a rank did not arrive within {limit} (launch.rdzv_timeout_s): it may have stopped "
            "earlier (see that node's log, e.g. a bundle that failed verification) or cannot reach this node")


def _say(ctx: RunContext, message: str) -> None:
    """Once per node: its local rank 0 prints for every rank there (each node's log shows why it stopped)."""
    if ctx.dist.local_rank == 0:
        print(f"tkc run: {message}", flush=True)
