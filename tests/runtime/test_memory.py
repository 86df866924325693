"""The C heap keeps freed memory for reuse (tkc.runtime.memory), in fresh processes: mallopt is process-wide."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from tkc.runtime import memory

# A training step's pattern, at the C level where torch's CPU allocator works (posix_memalign, 64-byte alignment, then
# free): sixteen 4 MiB blocks allocated, written, freed; 12 rounds to settle, then the minor page faults and peak
# RSS of 8 more. Memory given back to the OS between rounds is faulted in again (and zeroed) on every round.
PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from tkc.runtime.memory import keep_freed_memory
    print("took", keep_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [ctypes.c_void_p() for _ in range(16)]
def rounds(n, size=4 << 20):
    for _ in range(n):
        for b in blocks:
            libc.posix_memalign(ctypes.byref(b), 64, size)
            libc.memset(b, 1, size)
        for b in blocks:
            libc.free(b)
rounds(12)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(8)
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _probe(mode: str, **env: str) -> dict[str, str]:
    import os

    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc's mallopt only")


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    plain, kept = _probe("plain"), _probe("keep")
    assert kept["took"] == "True"
    # 8 rounds x 64 MiB = 131,072 pages when every round faults its blocks in again; reused pages fault none
    assert int(plain["faults"]) > 100_000, plain
    assert int(kept["faults"]) < 1_000, kept
    assert int(kept["maxrss_kib"]) <= int(plain["maxrss_kib"]) * 1.05, (kept, plain)  # no higher peak


def test_a_users_malloc_settings_are_left_alone():
    assert _probe("keep", MALLOC_TRIM_THRESHOLD_="131072")["took"] == "False"
    assert _probe("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")["took"] == "False"


def test_tkc_run_keeps_freed_memory(monkeypatch, tmp_path):
    """run_bundle(own_process=True) (`tkc run`, every rank of a launch) asks for it before the stages run; a library
    caller's process is left alone."""
    from tkc.runtime import run as run_mod

    (tmp_path / "resolved.json").write_text("{}")
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(run_mod, "verify", lambda bundle_dir: None)
    # what is run does not matter here: a plan of no stages
    monkeypatch.setattr(run_mod, "load_plan", lambda bundle_dir: types.SimpleNamespace(stages=(), launch=types.SimpleNamespace(kind="local")))
    monkeypatch.setattr(run_mod, "check_env", lambda plan, allow: (None, []))
    monkeypatch.setattr(run_mod, "_run_verified", lambda *a: calls.append("stages") or 0)
    assert run_mod.run_bundle(tmp_path, own_process=False) == 0
    assert calls == ["stages"]
    assert run_mod.run_bundle(tmp_path, own_process=True) == 0
    assert calls == ["stages", "keep", "stages"]
