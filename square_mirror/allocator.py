"""glibc malloc tuning for the long-running asyncio processes (the worker, the receiver).

Why: asyncio's selector transports read every socket with ``sock.recv(256 KiB)`` (``max_size`` in
``asyncio/selector_events.py``): CPython allocates a 256 KiB bytes object and shrinks it to the bytes actually
read. The first such buffer is above glibc's initial mmap threshold (128 KiB), so it is mmapped; freeing it makes
glibc raise its *dynamic* mmap threshold above 256 KiB, and from then on every read's buffer is carved out of the
brk heap and shrunk in place. Whenever something longer-lived is allocated behind a shrunk buffer, the hole left
when the buffer goes is too small for the next 256 KiB buffer, which therefore extends the heap again. Nothing
leaks (malloc's bytes in use stay flat) but the heap's *free* memory keeps growing (see cpython#85451 for the
same allocator regime; the measurements are in docs/performance.md, "Memory, in detail").

Pinning ``M_MMAP_THRESHOLD`` at 128 KiB switches that dynamic adjustment off: every 256 KiB read buffer is
mmapped and returned to the system when freed, so the heap no longer fragments. Setting the threshold
explicitly is what ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment does; an operator's own
``MALLOC_MMAP_THRESHOLD_`` is left alone.

The pin has a price where reads are many and small, as in the receiver: each 256 KiB buffer that the heap
cannot hold costs an ``mmap``, an ``mremap`` and a ``munmap`` (three system calls and a page fault per read),
and whether the heap can hold one depends on what the process happened to allocate before, so the same server's
CPU per request changed from one start to the next. :func:`cap_socket_reads` makes asyncio read at most 64 KiB at
a time: below the threshold, so a read buffer is always an ordinary heap chunk, shrunk in place, never mmapped.
Webhook deliveries are a few KiB; a larger body just takes more reads.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Final

M_MMAP_THRESHOLD: Final = -3  # mallopt parameter number in glibc's <malloc.h>
MMAP_THRESHOLD_BYTES: Final = 128 * 1024  # glibc's initial default, kept fixed from now on
SOCKET_READ_BYTES: Final = 64 * 1024  # below MMAP_THRESHOLD_BYTES
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


def cap_socket_reads(size: int = SOCKET_READ_BYTES) -> bool:
    """Make asyncio's socket transports read at most ``size`` bytes at a time; True if applied.

    ``max_size`` is a class attribute of a private asyncio class (the same from 3.11 to 3.13), so this checks
    that it is there and is an int before lowering it, and leaves a smaller value alone.
    """
    from asyncio import selector_events

    transport = getattr(selector_events, "_SelectorSocketTransport", None)
    current = getattr(transport, "max_size", None)
    if transport is None or not isinstance(current, int):
        return False
    if current > size:
        transport.max_size = size
    return True
