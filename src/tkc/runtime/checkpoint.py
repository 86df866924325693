"""Atomic checkpoints, one format for every stage: write .tmp-ckpt-N, fsync, COMPLETE marker (sha256 and size of every
file), rename to ckpt-N; keep the last save_total_limit; on resume, fall back past a corrupt checkpoint (set aside,
never deleted). Each holds state.json (bundle hash, stage, step): a checkpoint of another bundle is refused.
tkc's loop writes trainable.safetensors + optimizer.pt (save_checkpoint); the grpo stage writes its trainer's
own files through the same naming, publish, prune and fallback (save_staged, newest_loadable, read_state); a
sharded stage (ZeRO, FSDP) has every rank write its part into the one staging folder (save_sharded, load_sharded)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tkc.bundle.canonical import sha256_file
from tkc.bundle.io import fsync_path, set_aside
from tkc.runtime.context import BundleChanged, SaveFailed
from tkc.runtime.dist import DistInfo

_CKPT = re.compile(r"^ckpt-(\d+)$")
T = TypeVar("T")
# What a failed write raises: OSError from Python, SafetensorError from safetensors' Rust writer, RuntimeError from
# torch.save's zip writer (which hides the OSError: _Sink records it).
_WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


class CheckpointCorrupt(Exception):
    """A checkpoint marked COMPLETE whose files are missing, truncated, altered or unreadable."""


def save_checkpoint(root: Path, step: int, *, tensors: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint atomically; a crash at any point leaves the previous complete checkpoint usable.
    A failed write (disk full, quota, file-size limit) removes the half-written temp folder and raises SaveFailed."""
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = staging_dir(root, step), checkpoint_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)  # an unpublished temp of an earlier crash: never a checkpoint
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
        _torch_save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        publish(tmp, final, step)
    except _WRITE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space it took; nothing half-written stays behind
        raise SaveFailed(_save_failed(root, final.name, _nbytes(tensors) + _nbytes(optimizer_state), e)) from None
    prune_checkpoints(root, keep)
    return final


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"ckpt-{step}"


def staging_dir(root: Path, step: int) -> Path:
    """Where checkpoint `step` is written before publish: ignored by every listing, removed by prune."""
    return root / f".tmp-ckpt-{step}"


def save_staged(root: Path, step: int, write: Callable[[Path], Path], *, state: dict[str, Any], keep: int) -> Path:
    """A checkpoint whose files a trainer writes (grpo's): `write(staging)` fills a folder under the staging dir and
    returns it; then state.json, publish, prune, and on a failed write SaveFailed, all as save_checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = staging_dir(root, step), checkpoint_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        written = write(tmp)
        (written / "state.json").write_text(json.dumps(state, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        publish(written, final, step)
    except _WRITE_ERRORS as e:
        nbytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveFailed(_save_failed(root, final.name, nbytes, e)) from None
    shutil.rmtree(tmp, ignore_errors=True)
    prune_checkpoints(root, keep)
    return final


def save_sharded(root: Path, step: int, write: Callable[[Path], None], *, state: dict[str, Any], keep: int,
                 dist: DistInfo) -> Path:
    """A checkpoint every rank writes part of (ZeRO, FSDP: each rank's shard of the weights and optimizer state).

    The main rank makes the staging folder; every rank's `write(staging)` adds its own files (names unique per
    rank); then the main rank writes state.json and publishes (COMPLETE lists every rank's files with sha256 and
    size), and prunes. A write that fails on any rank fails the save on every rank (SaveFailed), the staging
    folder removed: nothing half-written is ever published. Every rank calls this; it returns once published."""
    from tkc.runtime.distributed import any_rank, barrier

    tmp, final = staging_dir(root, step), checkpoint_dir(root, step)
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(dist)
    error: BaseException | None = None
    try:
        write(tmp)
    except _WRITE_ERRORS as e:
        error = e
    if not any_rank(dist, error is not None) and dist.is_main:
        try:
            (tmp / "state.json").write_text(json.dumps(state, sort_keys=True, indent=1) + "\n", encoding="utf-8")
            publish(tmp, final, step)
        except _WRITE_ERRORS as e:
            error = e
    if any_rank(dist, error is not None):
        nbytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
        barrier(dist)
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise SaveFailed(_save_failed(root, final.name, nbytes, error or OSError(
            f"rank {dist.rank} wrote its part; another rank could not write its own (its log says why)"))) from None
    if dist.is_main:
        prune_checkpoints(root, keep)
    barrier(dist)
    return final


def load_sharded(root: Path, read: Callable[[Path], T], *, bundle_hash: str, log: Callable[[str], None],
                 dist: DistInfo) -> tuple[Path, dict[str, Any], T] | None:
    """The newest whole checkpoint of a sharded stage, read on every rank: (path, state, what `read` returned).

    The main rank picks it (files against COMPLETE, bundle hash, corrupt ones set aside as in newest_loadable)
    and tells the others, so every rank loads the same step; a refusal there (another bundle's checkpoint) is
    raised on every rank."""
    from tkc.runtime.distributed import broadcast_object

    choice: tuple[str, str | None] = ("none", None)
    if dist.is_main:
        try:
            found = newest_loadable(root, lambda p: read_state(p, bundle_hash=bundle_hash), log=log)
            choice = ("none", None) if found is None else ("path", found[0].name)
        except BundleChanged as e:
            choice = ("changed", str(e))
    kind, value = broadcast_object(dist, choice)  # type: ignore[misc]
    if kind == "changed":
        raise BundleChanged(value)
    if kind == "none":
        return None
    path = root / value
    return path, json.loads((path / "state.json").read_text(encoding="utf-8")), read(path)


class _Sink:
    """A file torch.save writes through, keeping the OSError that its zip writer turns into 'unexpected pos'."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def _nbytes(obj: Any) -> int:
    """Bytes of tensor data in a (nested) state dict: about what a checkpoint writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_space(path: Path) -> str:
    try:
        return f"{mib(shutil.disk_usage(path).free)} free there"
    except OSError:
        return "free space unknown"


def _save_failed(root: Path, name: str, nbytes: int, error: BaseException) -> str:
    previous = list_checkpoints(root)
    then = (f"the previous complete checkpoint {previous[-1][1].name} (step {previous[-1][0]}) is intact, and "
            f"`tkc run` on this bundle resumes from it {_remedy(error)}" if previous else
            "this stage has no earlier checkpoint, so `tkc run` on this bundle starts it again from step 0 (the "
            f"same run) {_remedy(error)}")
    return (f"could not write checkpoint {name} in {root}: {error} (writing about {mib(nbytes)} of weights and "
            f"optimizer state; {free_space(root)}). The half-written checkpoint was removed; {then}.")


def publish(tmp: Path, final: Path, step: int) -> None:
    """Make the fully written directory `tmp` the checkpoint `final`, atomically: every file and folder fsynced,
    a COMPLETE marker (the step and each file's sha256 and size) written and fsynced last, then one rename (and the
    parent fsynced). A crash before the rename leaves only `tmp`, which readers ignore; after it, `final` is whole
    on disk. A checkpoint already at `final` (a step redone after a fallback) is set aside, not deleted. Adapter
    configs a trainer saved into it (GRPO's) are made canonical first, like the stage's model."""
    canonical_adapter_configs(tmp)
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "COMPLETE")
    for f in files:
        fsync_path(f)
    record = {"step": step, "files": {f.relative_to(tmp).as_posix(): _file_record(f) for f in files}}
    (tmp / "COMPLETE").write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    fsync_path(tmp / "COMPLETE")
    for d in [*sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True), tmp]:
        fsync_path(d)
    if final.exists():
        set_aside(final, "replaced")
    os.rename(tmp, final)
    fsync_path(final.parent)


def _file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first; half-written .tmp-* and set-aside (ckpt-N.corrupt-k) ones are ignored."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT.match(p.name)
        if m and (p / "COMPLETE").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (keep <= 0 keeps all) and stale temp dirs, but never
    the newest checkpoint whose files are all there at their recorded sizes (set-aside ones are never counted)."""
    for p in root.glob(".tmp-ckpt-*"):
        shutil.rmtree(p, ignore_errors=True)
    ckpts = list_checkpoints(root)
    if keep > 0:
        whole = next((p for _, p in reversed(ckpts) if check_files(p, hashes=False) is None), None)
        for _, p in ckpts[:-keep]:
            if p != whole:
                shutil.rmtree(p, ignore_errors=True)


def check_files(path: Path, *, hashes: bool = True) -> str | None:
    """What is wrong with a checkpoint's files against its COMPLETE record (None: nothing). Checkpoints from before
    the record held hashes (COMPLETE is just the step) are checked only by loading them."""
    try:
        record = json.loads((path / "COMPLETE").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"COMPLETE unreadable: {e}"
    if not isinstance(record, dict):
        return None
    for rel, want in sorted((record.get("files") or {}).items()):
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want["size"]:
            return f"{rel} has {f.stat().st_size} bytes, {want['size']} were written"
        if hashes and _file_record(f)["sha256"] != want["sha256"]:
            return f"{rel} does not match the sha256 recorded when it was written"
    return None


def read_state(path: Path, *, bundle_hash: str) -> dict[str, Any]:
    """state.json of a checkpoint whose files are all as written; BundleChanged for a checkpoint of another bundle,
    CheckpointCorrupt when a file is not what was written or state.json cannot be read."""
    problem = check_files(path)
    if problem:
        raise CheckpointCorrupt(problem)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorrupt(f"state.json unreadable: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointCorrupt("state.json holds no step")
    if state.get("bundle_hash") != bundle_hash:
        raise BundleChanged(
            f"checkpoint {path} was written by bundle {str(state.get('bundle_hash', '?'))[:12]}, but this bundle is "
            f"{bundle_hash[:12]}: the plan changed since training started. Delete {path.parent.parent} to start "
            "this stage over, or run the original bundle."
        )
    return state


def load_checkpoint(path: Path, *, bundle_hash: str) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """Return (trainable tensors, optimizer state, loop state) of one of the loop's checkpoints (see read_state)."""
    state = read_state(path, bundle_hash=bundle_hash)
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
    except (OSError, SafetensorError) as e:
        raise CheckpointCorrupt(f"trainable.safetensors unreadable: {e}") from None
    try:
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # a garbled zip/pickle raises any of RuntimeError, UnpicklingError, EOFError, ValueError
        raise CheckpointCorrupt(f"optimizer.pt unreadable: {type(e).__name__}: {e}") from None
    return tensors, optimizer_state, state


def load_latest(root: Path, *, bundle_hash: str, log: Callable[[str], None], set_aside_corrupt: bool = True
                ) -> tuple[Path, dict[str, torch.Tensor], dict, dict[str, Any]] | None:
    """The newest of the loop's checkpoints that loads whole, as (path, tensors, optimizer state, state)."""
    found = newest_loadable(root, lambda p: load_checkpoint(p, bundle_hash=bundle_hash), log=log,
                            set_aside_corrupt=set_aside_corrupt)
    return None if found is None else (found[0], *found[1])


def newest_loadable(root: Path, load: Callable[[Path], T], *, log: Callable[[str], None],
                    set_aside_corrupt: bool = True) -> tuple[Path, T] | None:
    """The newest checkpoint that `load` reads whole, as (path, what it read); None when none does.

    A corrupt one (`load` raised CheckpointCorrupt) is renamed ckpt-N.corrupt-k (kept for inspection, never deleted)
    by the rank that may write (`set_aside_corrupt`), logged, and the one before it tried. With none left the stage
    starts at step 0, which is exactly what a fresh run does: the data order and every RNG are functions of
    (seed, step) alone."""
    ckpts = list_checkpoints(root)
    for _, path in reversed(ckpts):
        try:
            return path, load(path)
        except CheckpointCorrupt as e:
            kept = set_aside(path, "corrupt").name if set_aside_corrupt else path.name
            log(f"checkpoint {path.name} is corrupt ({e}); kept as {root.name}/{kept}, falling back to the one before")
    if ckpts:
        log("no valid checkpoint remains: starting this stage from step 0, exactly as a fresh run would "
            "(same seed, same plan)")
    return None


# adapter_config.json fields peft holds as sets: json lists in hash order, which PYTHONHASHSEED changes per process
_SET_FIELDS = ("target_modules", "exclude_modules", "modules_to_tie", "target_modules_to_tie")


def canonical_adapter_configs(folder: Path) -> None:
    """Sort the set-valued lists of every adapter_config.json under `folder` (peft's own layout otherwise), so two
    runs that save equal adapters save equal bytes."""
    for path in sorted(folder.rglob("adapter_config.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        for key in _SET_FIELDS:
            value = config.get(key)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                config[key] = sorted(value)
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def save_model_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a stage's model folder atomically: `write(tmp)` fills a sibling .tmp- folder, adapter configs are made
    canonical, every file is fsynced, then one rename. A folder already at `target` (a run that died after saving
    it, before DONE) is set aside as model.replaced-k. A failed write removes the temp folder and raises SaveFailed."""
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # an unpublished temp of an earlier crash
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        canonical_adapter_configs(tmp)
        for p in sorted(tmp.rglob("*"), reverse=True):
            fsync_path(p)
        fsync_path(tmp)
        if target.exists():
            set_aside(target, "replaced")
        os.rename(tmp, target)
        fsync_path(target.parent)
    except _WRITE_ERRORS as e:
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveFailed(_model_save_failed(target, written, e)) from None


def _model_save_failed(target: Path, written: int, error: BaseException) -> str:
    ckpts = list_checkpoints(target.parent / "checkpoints")
    then = (f"its last checkpoint {ckpts[-1][1].name} is intact, and `tkc run` on this bundle resumes from it"
            if ckpts else "`tkc run` on this bundle runs the stage again")
    return (f"could not save the model to {target}: {error} ({mib(written)} written before it failed; "
            f"{free_space(target.parent)}). The half-written copy was removed; the stage is not marked done: "
            f"{then} {_remedy(error)}.")


def _remedy(error: BaseException) -> str:
    space = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(
        s in str(error) for s in ("No space left", "Disk quota", "File too large"))
    return "once space is freed" if space else "once the cause above is fixed"
