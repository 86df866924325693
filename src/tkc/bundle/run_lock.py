"""One run of a bundle at a time: an exclusive flock on `outputs/.tkc-run.lock` (stdlib only).

`tkc run` holds it for its whole life; the board takes it before it starts `tkc run` and hands the locked
descriptor to the child (`TKC_RUN_LOCK_FD`), so there is no moment between the two when a second run could slip
in. The kernel drops the lock when its last holder dies, kill -9 included: a stale file never blocks.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

RUN_LOCK = ".tkc-run.lock"   # in outputs/ (never hashed)
INHERITED_ENV = "TKC_RUN_LOCK_FD"   # a descriptor already holding the lock, passed down by the process that took it


def acquire(bundle_dir: Path) -> tuple[int | None, str]:
    """(a descriptor holding the lock, "") or (None, why not: another run holds it, naming its pid)."""
    outputs = Path(bundle_dir) / "outputs"
    path = outputs / RUN_LOCK
    inherited = _inherited(path)
    if inherited is not None:
        return inherited, ""
    try:
        outputs.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        return None, f"cannot open {path}: {e.strerror or e}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = held if held.isdigit() else "unknown"
        return None, (f"another `tkc run` of {Path(bundle_dir)} is running (pid {pid}); two runs would write the "
                      "same outputs/ and checkpoints")
    claim(fd)
    return fd, ""


def claim(fd: int) -> None:
    """Write this process's pid into the lock file (what a refused run names)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _inherited(path: Path) -> int | None:
    """The descriptor named by TKC_RUN_LOCK_FD when it is this bundle's lock file (taken from the environment
    once, so processes this one starts do not inherit the claim)."""
    value = os.environ.pop(INHERITED_ENV, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except OSError:
        return None
    if not same:
        return None
    claim(fd)
    return fd
