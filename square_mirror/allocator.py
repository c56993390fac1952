"""glibc malloc tuning for the long-running asyncio processes (the worker, the receiver).

Why: asyncio's selector transports read every socket with ``sock.recv(256 KiB)`` (``max_size`` in
``asyncio/selector_events.py``): CPython allocates a 256 KiB bytes object and shrinks it to the bytes actually
read. The first such buffer is above glibc's initial mmap threshold (128 KiB), so it is mmapped; freeing it makes
glibc raise its *dynamic* mmap threshold above 256 KiB, and from then on every read's buffer is carved out of the
brk heap and shrunk in place. Whenever something longer-lived is allocated behind a shrunk buffer, the hole left
when the buffer goes is too small for the next 256 KiB buffer, which therefore extends the heap again. Nothing
leaks (malloc's bytes in use stay flat) but the heap's *free* memory keeps growing. Measured with glibc's
``mallinfo2`` inside the worker during bench/load.py (150 events/s): heap 13.9 -> 25.5 MiB in 3 minutes with
12.4 MiB in use throughout (free chunks 1.5 -> 13.0 MiB); at 80 events/s for 12 minutes the heap reached
29.7 MiB and was still growing, worker RSS +24 MiB (see cpython#85451 for the same allocator regime).

Pinning ``M_MMAP_THRESHOLD`` at 128 KiB switches that dynamic adjustment off: every 256 KiB read buffer is
mmapped and returned to the system when freed, so the heap no longer fragments (the same 12-minute run: heap
12.8 -> 13.9 MiB, free chunks about 1 MiB, RSS +5.5 MiB, most of it in the first minutes). Setting the threshold
explicitly is what ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment does; an operator's own
``MALLOC_MMAP_THRESHOLD_`` is left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Final

M_MMAP_THRESHOLD: Final = -3  # mallopt parameter number in glibc's <malloc.h>
MMAP_THRESHOLD_BYTES: Final = 128 * 1024  # glibc's initial default, kept fixed from now on
ENV_OVERRIDE: Final = "MALLOC_MMAP_THRESHOLD_"


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (no dynamic raising); True if applied. No-op off glibc or when the
    environment already sets ``MALLOC_MMAP_THRESHOLD_``."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV_OVERRIDE):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt is a stub that ignores this
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
