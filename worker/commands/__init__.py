"""The worker package's commands: ``worker``, ``backfill``, ``reconcile``, ``redrive`` (see square_mirror/cli.py).

What the one-shot commands share: SIGTERM/SIGINT cancel the run (so it is recorded ``interrupted``, not left
``running``), and one JSON line per run on stdout.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


async def cancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` as a task that SIGTERM (and SIGINT) cancel, so runs end as ``interrupted``, not dead."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, task.cancel)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread / Windows
            pass
    try:
        return await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def print_summary(summary: Mapping[str, Any]) -> None:
    print(orjson.dumps(dict(summary)).decode(), file=sys.stdout, flush=True)
