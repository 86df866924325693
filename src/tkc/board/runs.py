"""Runs started from the board: `tkc run <bundle>` as an argv list in its own process group, recorded on disk.

<workspace>/.tkc-board/runs/<id>/run.json (atomic) and log.txt (stdout + stderr). The list is read from disk, so
it survives a board restart; a run whose process is gone without a recorded return code is 'lost'.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tkc.board.bundles import runnable_bundle, stage_names, stage_names_or_404, verify_problems
from tkc.board.security import BoardError, relative
from tkc.board.workspace import BOARD_DIR, open_dir, write_atomic
from tkc.bundle import run_lock

EXIT_SIGTERM = 143
MAX_LOG_CHUNK = 256 << 10
_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _alive(pid: int, bundle: str) -> bool:
    """The pid runs and (where /proc tells) is still our `tkc run` of this bundle, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return bundle.encode() in cmdline.read_bytes() if cmdline.exists() else True
    except OSError:
        return False


class RunManager:
    """Starts, stops and lists runs; one live run per bundle."""

    def __init__(self, workspace: Path):
        self.workspace = workspace.resolve()
        self.root = self.workspace / BOARD_DIR / "runs"
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # ---- records ----
    def _root_ok(self) -> bool:
        """.tkc-board/runs is the workspace's own folder (not a symlink leading elsewhere)."""
        return self.root.is_dir() and self.root.resolve() == self.root and self.root.is_relative_to(self.workspace)

    def _dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _ID.match(run_id) or not self._root_ok() \
                or not (self.root / run_id / "run.json").is_file():
            raise BoardError(404, "not_found", f"no run {run_id!r}")
        return self.root / run_id

    def _read(self, run_id: str) -> dict[str, Any]:
        rec = json.loads((self._dir(run_id) / "run.json").read_text(encoding="utf-8"))
        if not self._ours(rec):
            raise BoardError(404, "not_found", f"no run {run_id!r}")
        return rec

    def _ours(self, rec: Any) -> bool:
        """A record this board could have written: its bundle inside the workspace (a planted run.json naming
        another folder is ignored, never read through)."""
        return isinstance(rec, dict) and isinstance(rec.get("bundle_abs"), str) and isinstance(rec.get("id"), str) \
            and Path(rec["bundle_abs"]).resolve().is_relative_to(self.workspace)

    def _write(self, record: dict[str, Any]) -> None:
        write_atomic(self.root / record["id"] / "run.json", (json.dumps(record, indent=2) + "\n").encode(),
                     self.workspace)

    def _status(self, rec: dict[str, Any]) -> str:
        proc = self._procs.get(rec["id"])
        if rec.get("returncode") is None:
            if proc is not None and proc.poll() is None:
                return "running"
            if proc is None and rec.get("pid") and _alive(int(rec["pid"]), str(rec["bundle_abs"])):
                return "running"
            return "lost" if proc is None else "running"  # our process just ended: its waiter records it
        code = int(rec["returncode"])
        return "finished" if code == 0 else "stopped" if code == EXIT_SIGTERM else "failed"

    # ---- actions ----
    def start(self, bundle_value: Any) -> str:
        bundle = runnable_bundle(self.workspace, bundle_value)
        problems = verify_problems(bundle)
        if problems:
            raise BoardError(409, "unverified", "the bundle failed verification (tkc verify); not started",
                             problems=problems)
        with self._lock:
            if any(r["bundle_abs"] == str(bundle) and r["status"] == "running" for r in self._records()):
                raise BoardError(409, "conflict", "bundle: a run of this bundle is already running", field="bundle")
            return self._spawn(bundle)

    def _spawn(self, bundle: Path) -> str:
        from tkc.bundle.io import read_manifest

        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        lock = self._lock_bundle(bundle)
        try:
            log_fd = self._create(self.root / run_id, "log.txt")
            argv = [sys.executable, "-m", "tkc.cli.main", "run", str(bundle)]
            # the child is handed the run lock this board took (tkc.bundle.run_lock): no gap for a second run
            env = {**os.environ, "PYTHONUNBUFFERED": "1", run_lock.INHERITED_ENV: str(lock)}
            with os.fdopen(log_fd, "wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.workspace, env=env, shell=False, start_new_session=True,
                                        pass_fds=(lock,))
        finally:
            os.close(lock)
        record = {"id": run_id, "bundle": relative(self.workspace, bundle), "bundle_abs": str(bundle),
                  "hash": read_manifest(bundle)["bundle_hash"], "argv": argv, "pid": proc.pid, "started": _now(),
                  "ended": None, "returncode": None, "stop_requested": False}
        self._write(record)
        self._procs[run_id] = proc
        threading.Thread(target=self._wait, args=(run_id, proc), daemon=True, name=f"tkc-board-{run_id}").start()
        return run_id

    def _create(self, folder: Path, name: str, flags: int = os.O_EXCL) -> int:
        """A new file in `folder` under the workspace's .tkc-board/, never through a symlink (workspace.open_dir)."""
        try:
            fd = open_dir(self.workspace, folder, create=True)
        except OSError as exc:
            raise BoardError(409, "conflict", f"{BOARD_DIR}/ is not a plain folder of this workspace "
                             f"({exc.strerror}); no run was started") from None
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | flags, 0o644, dir_fd=fd)
        finally:
            os.close(fd)

    def _lock_bundle(self, bundle: Path) -> int:
        """The bundle's run lock (tkc.bundle.run_lock, what `tkc run` itself takes), held from here by the run's
        process for its life: a second run of one bundle (from this board, another board, one restarted, or a
        shell) is refused while the first lives."""
        fd, why = run_lock.acquire(bundle)
        if fd is None and why.startswith("cannot open"):  # the reason only: the message names an absolute path
            reason = why.rsplit(": ", 1)[-1]
            raise BoardError(409, "conflict", f"bundle: cannot open its outputs/{run_lock.RUN_LOCK}: {reason}",
                             field="bundle")
        if fd is None:
            raise BoardError(409, "conflict", "bundle: a run of this bundle is already running", field="bundle")
        return fd

    def _wait(self, run_id: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            record = self._read(run_id)
            # what this run ended with, kept with it: the bundle's outputs move on when it is resumed
            record.update(returncode=code, ended=_now(), final=_ended_view(Path(record["bundle_abs"])))
            self._write(record)

    def stop(self, run_id: str) -> None:
        with self._lock:
            record = self._read(run_id)
            if self._status(record) != "running":
                raise BoardError(409, "conflict", f"run {run_id} is not running")
            try:
                os.killpg(int(record["pid"]), signal.SIGTERM)  # the group: torchrun and its ranks too
            except ProcessLookupError:
                pass
            record["stop_requested"] = True
            self._write(record)

    def resume(self, run_id: str) -> str:
        record = self._read(run_id)
        return self.start(record["bundle"])

    # ---- views ----
    def _records(self) -> list[dict[str, Any]]:
        out = []
        for f in sorted(self.root.glob("*/run.json"), reverse=True) if self._root_ok() else []:
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if self._ours(rec):
                out.append({**rec, "status": self._status(rec)})
        return out

    def list(self) -> list[dict[str, Any]]:
        return [self._view(r) for r in self._records()]

    def _view(self, rec: dict[str, Any]) -> dict[str, Any]:
        bundle = Path(rec["bundle_abs"])
        status = rec.get("status") or self._status(rec)
        # a running run shows the bundle's live outputs; an ended one what it ended with (none if not recorded)
        ended = rec.get("final") if isinstance(rec.get("final"), dict) else None
        live = _ended_view(bundle) if status == "running" else (ended or {"stage": current_stage(bundle), "metrics": {}})
        return {"id": rec["id"], "bundle": rec["bundle"], "hash": rec["hash"], "stage": live.get("stage"),
                "status": status, "returncode": rec.get("returncode"), "started": rec.get("started"),
                "ended": rec.get("ended"), "metrics": live.get("metrics", {}), "last_step": live.get("last_step")}

    def get(self, run_id: str) -> dict[str, Any]:
        rec = self._read(run_id)
        view = self._view({**rec, "status": self._status(rec)})
        stage = view["stage"]
        if view["status"] == "running" or view["last_step"] is None:
            steps = read_steps(Path(rec["bundle_abs"]), stage) if stage else []
            step = steps[-1].get("step") if steps else 0
        else:
            step = view["last_step"]  # where this run ended, not where a later resume of the bundle is
        total = total_steps(self._dir(run_id) / "log.txt", stage) if stage else None
        view["progress"] = {"stage": stage, "step": step, "total_steps": total}
        return view

    def log(self, run_id: str, offset: int) -> dict[str, Any]:
        path = self._dir(run_id) / "log.txt"
        if path.is_symlink() or not path.is_file():
            return {"text": "", "offset": 0}
        size = path.stat().st_size
        offset = min(max(0, offset), size)
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(MAX_LOG_CHUNK)
        return {"text": data.decode("utf-8", "replace"), "offset": offset + len(data)}

    def steps(self, run_id: str, stage: str | None) -> dict[str, Any]:
        rec = self._read(run_id)
        bundle = Path(rec["bundle_abs"])
        stage = stage or current_stage(bundle)
        if stage is not None:
            stage_names_or_404(bundle, stage)
        return {"stage": stage, "steps": read_steps(bundle, stage) if stage else []}


def _ended_view(bundle: Path) -> dict[str, Any]:
    """The stage a run is at, its last logged step and the finished stages' metrics, as of now."""
    stage = current_stage(bundle)
    steps = read_steps(bundle, stage) if stage else []
    return {"stage": stage, "metrics": final_metrics(bundle), "last_step": steps[-1].get("step") if steps else None}


def current_stage(bundle: Path) -> str | None:
    """The first stage not done that has begun writing outputs, else the last one done, else the first."""
    names = stage_names(bundle)
    outputs = bundle / "outputs"
    for name in names:
        if not (outputs / name / "DONE").is_file() and (outputs / name).is_dir():
            return name
    done = [n for n in names if (outputs / n / "DONE").is_file()]
    return done[-1] if done else (names[0] if names else None)


def read_steps(bundle: Path, stage: str) -> list[dict[str, Any]]:
    path = bundle / "outputs" / stage / "steps.jsonl"
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return rows


def total_steps(log: Path, stage: str) -> int | None:
    """The step total `tkc run` prints for the stage (`[stage] step 3/40 ...`), latest first: read from the
    log's last MAX_LOG_CHUNK bytes only (a log may be huge)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - MAX_LOG_CHUNK))
            text = f.read(MAX_LOG_CHUNK).decode("utf-8", errors="replace")
    except OSError:
        return None
    found = re.findall(rf"\[{re.escape(stage)}\] step \d+/(\d+)", text)
    return int(found[-1]) if found else None


def final_metrics(bundle: Path) -> dict[str, Any]:
    """Each finished stage's metrics.json, by stage name."""
    out = {}
    for name in stage_names(bundle):
        path = bundle / "outputs" / name / "metrics.json"
        if (bundle / "outputs" / name / "DONE").is_file() and path.is_file():
            try:
                out[name] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return out
