"""Give freed heap memory back to the operating system between a client's phases.

A client process lives for many rounds (a Ray actor, a site's resident worker). Its phases free hundreds of MB of
short-lived buffers (activations, the bf16 casts of ``model.compute_dtype``, KV caches) of ever-changing sizes;
glibc keeps such freed memory in its heap for reuse, fragmented, so the process's resident size creeps up round
after round. ``malloc_trim`` returns the free pages at once; it costs milliseconds, a phase costs seconds.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to trim
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def resident_mb() -> float:
    """This process's resident set size now, in MB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS; True if any were (False where the C library cannot)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
