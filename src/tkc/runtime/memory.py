"""The C heap of a training process: freed memory is kept for the next step instead of going back to the OS.

torch's CPU allocator is plain malloc/free, one block per tensor. glibc serves a block at or above its mmap
threshold (128 KiB, rising with use to at most 32 MiB) with a fresh mmap and unmaps it on free, and gives the
top of the heap back to the OS once more than its trim threshold (twice that) is free there. Every step of a
training loop allocates and frees the same activations, gradients and logits, so each of those pages is faulted
in again, zeroed by the kernel, step after step. Keeping them costs little peak memory, since a step needs them
all at once anyway; what it does cost is fragmentation a trimmed heap would have given back.

Only for a process tkc owns (`tkc run`, one rank of a launch), only with glibc, and never over a setting the
user made through the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# Blocks up to 32 MiB come from the heap, where freed ones are reused: glibc's own ceiling for its dynamic threshold,
# fixed from the start. Larger blocks stay mmapped as before: glibc 2.36's posix_memalign (torch's allocator), given
# one block allocated and freed in a loop, grows the heap to several times the block before it reuses it, so the
# largest blocks are left out of the heap.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the most it can say, 2 GiB of free heap top kept
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time (address space only; pages are faulted in when used)

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _glibc():
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc only: musl and macOS lack it


def user_set() -> bool:
    """Whether the environment already tunes glibc's malloc (MALLOC_*_ variables or glibc.malloc tunables)."""
    return any(k in os.environ for k in _USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory in the heap for reuse. True when it took the settings.

    Seen on the bench's SFT workloads: most of the process's system time (page faults) goes, and the peak RSS
    stays within a few percent; BENCHMARKS.md has the training figures measured with it.
    """
    if user_set():
        return False
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
