"""The worker and receiver pin glibc's mmap threshold, so asyncio's 256 KiB read buffers never fragment the heap.

Each case runs in a fresh interpreter: the threshold is process-wide state and must not leak into pytest itself.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from square_mirror import allocator

ROOT = Path(__file__).resolve().parents[3]

# glibc's malloc statistics, for the probes below (each runs in a fresh interpreter).
_MALLINFO = """
import ctypes

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
"""

# What asyncio does on every socket read: a 256 KiB buffer (mmapped the first time), then freed. Afterwards, is a
# 200 KiB allocation still mmapped (given back to the system when freed) or carved out of the brk heap?
_PROBE = _MALLINFO + """
import sys
from square_mirror.allocator import pin_mmap_threshold
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
read_buffer = bytearray(256 * 1024)
del read_buffer  # glibc now raises its dynamic mmap threshold past 256 KiB, unless it is pinned
before = libc.mallinfo2().hblks
next_buffer = bytearray(200 * 1024)
print("mmapped" if libc.mallinfo2().hblks == before + 1 else "heap")
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL(None)
        return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")
    except OSError:
        return False


def _probe(mode: str, script: str = _PROBE, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env, PYTHONPATH=str(ROOT), PYTHONMALLOC="pymalloc")
    done = subprocess.run([sys.executable, "-c", script, mode], env=environ, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 only")
def test_pinned_threshold_keeps_read_buffers_out_of_the_heap() -> None:
    assert _probe("default") == "heap"  # the regime that grew the worker's heap by ~4 MiB/min in the soak
    assert _probe("pin") == "mmapped"


# Under the pinned threshold, is the buffer of a socket read mmapped (three system calls per read), or a heap chunk?
# malloc_trim first, so the heap has no free 256 KiB to offer: what a process's heap may or may not have.
_READ_PROBE = _MALLINFO + """
import asyncio, socket, sys
from square_mirror.allocator import cap_socket_reads, pin_mmap_threshold
assert pin_mmap_threshold()
if sys.argv[1] == "cap":
    assert cap_socket_reads()

async def main():
    mmapped = []
    class Reader(asyncio.Protocol):
        def data_received(self, data):
            mmapped.append(libc.mallinfo2().hblks > before)  # while `data`, the read buffer, is alive
    ours, theirs = socket.socketpair()
    await asyncio.get_running_loop().connect_accepted_socket(Reader, ours)
    for _ in range(10):
        libc.malloc_trim(0)
        before = libc.mallinfo2().hblks
        theirs.send(b"x" * 1500)
        await asyncio.sleep(0.01)
    print("mmapped" if all(mmapped) else "heap" if not any(mmapped) else "mixed")

asyncio.run(main())
"""


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 only")
def test_capped_reads_never_cost_an_mmap_under_the_pinned_threshold() -> None:
    assert _probe("plain", script=_READ_PROBE) == "mmapped"  # asyncio's 256 KiB read, above the threshold
    assert _probe("cap", script=_READ_PROBE) == "heap"


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 only")
def test_an_operators_own_malloc_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.ENV_OVERRIDE, "65536")
    assert allocator.pin_mmap_threshold() is False


def test_worker_and_receiver_pin_the_threshold_and_the_receiver_caps_its_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    import square_mirror.logs
    import webhooks.cli
    import worker.commands.worker

    monkeypatch.setattr(worker.commands.worker, "configure_logging", lambda *_a, **_k: None)
    monkeypatch.setattr(square_mirror.logs, "configure_logging", lambda *_a, **_k: None)
    calls: list[str] = []
    monkeypatch.setattr(allocator, "pin_mmap_threshold", lambda: calls.append("receiver") or True)
    monkeypatch.setattr(allocator, "cap_socket_reads", lambda: calls.append("receiver reads") or True)
    monkeypatch.setattr(worker.commands.worker, "pin_mmap_threshold", lambda: calls.append("worker") or True)

    class Stop(Exception):
        pass

    def stop(*_a: object, **_k: object) -> None:
        raise Stop

    monkeypatch.setattr(worker.commands.worker, "build_workers", stop)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nowhere/db")
    monkeypatch.setenv("REDIS_URL", "redis://nowhere:6379/0")
    with pytest.raises(Stop):
        worker.commands.worker.run(argparse.Namespace(burst=False, queues=["events", "lanes", "backfill"]))
    assert calls == ["worker"]

    import webhooks.app

    monkeypatch.setattr(webhooks.app, "create_app", stop)
    monkeypatch.setenv("SQUARE_WEBHOOK_SIGNATURE_KEY", "k" * 24)
    monkeypatch.setenv("SQUARE_WEBHOOK_NOTIFICATION_URL", "https://example.test/square/webhooks")
    with pytest.raises(Stop):
        asyncio.run(webhooks.cli.run(argparse.Namespace(host="127.0.0.1", port=0)))
    assert calls == ["worker", "receiver", "receiver reads"]
