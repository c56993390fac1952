"""The micro-batcher: many concurrent jobs' small requests become one request per few milliseconds.

Each job ``submit``s a keyed item and awaits its own result; a batch is run after ``window`` seconds (or at
``max_batch`` items, at once), with at most ``max_in_flight`` batches running at once, so under load batches
grow with the load instead of the number of round trips. A key already pending shares that item's result.
``run`` may answer an exception for one key: only that item's waiters see it. ``min_interval`` spaces the starts
of batches that are not full, so a busy key gathers more items per batch rather than more batches.

Used for the inbox (record + gate, finish: one statement per batch) and, one batcher per merchant, for the
fetch coalescer (one BulkRetrieveCustomers per batch), which also lets a job share a batch already running
(:meth:`MicroBatcher.running`). At hundreds of events per second, one round trip per job would be the
bottleneck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class MicroBatcher(Generic[K, V, R]):
    def __init__(
        self,
        run: Callable[[dict[K, V]], Awaitable[dict[K, R | BaseException]]],
        *,
        window: float = 0.005,
        max_batch: int = 500,
        max_in_flight: int = 2,
        min_interval: float = 0.0,
    ) -> None:
        self._run_batch = run
        self.window = max(0.0, window)
        self.min_interval = max(0.0, min_interval)
        self._next_start = 0.0  # loop time before which a batch that is not full does not start
        self.max_batch = max(1, max_batch)
        self.max_in_flight = max(1, max_in_flight)
        self._items: dict[K, V] = {}
        self._futures: dict[K, asyncio.Future[R]] = {}
        self._running_futures: dict[K, asyncio.Future[R]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._due = False
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: K, item: V) -> R:
        """Run ``item`` in the next batch; a key already pending shares that item's result."""
        return await asyncio.shield(self.join(key, item))

    def join(self, key: K, item: V) -> asyncio.Future[R]:
        """:meth:`submit` without waiting: the future of ``key``'s result in the next batch."""
        future = self._futures.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._futures[key] = loop.create_future()
            future.add_done_callback(_consume)
            self._items[key] = item
            if self._timer is None and not self._due:
                self._timer = loop.call_later(max(self.window, self._next_start - loop.time()), self._window_passed)
            if len(self._items) >= self.max_batch:
                self._flush()
        return future

    def running(self, key: K) -> asyncio.Future[R] | None:
        """The future of ``key`` in a batch already running, if any (a caller may decide to share it)."""
        return self._running_futures.get(key)

    def _window_passed(self) -> None:
        self._timer = None
        if self._running >= self.max_in_flight:
            self._due = True  # sent when a batch in flight comes back
        else:
            self._flush()

    def _flush(self) -> None:
        self._due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items:
            return
        items, futures = self._items, self._futures
        self._items, self._futures = {}, {}
        loop = asyncio.get_running_loop()
        self._next_start = loop.time() + self.min_interval
        self._running_futures.update(futures)
        self._running += 1
        task = loop.create_task(self._run(items, futures))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if not self._due:
            return
        loop = asyncio.get_running_loop()
        wait = self._next_start - loop.time()
        if wait > 0 and len(self._items) < self.max_batch:  # paced: the batch keeps gathering until its time
            self._due = False
            self._timer = loop.call_later(wait, self._window_passed)
        else:
            self._flush()

    async def _run(self, items: dict[K, V], futures: dict[K, asyncio.Future[R]]) -> None:
        try:
            results = await self._run_batch(items)
        except BaseException as exc:
            self._forget(futures)
            error = exc if isinstance(exc, Exception) else RuntimeError("batch cancelled")
            for future in futures.values():
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self._forget(futures)
        for key, future in futures.items():
            if not future.done():
                if key not in results:
                    future.set_exception(KeyError(f"batch returned no result for {key!r}"))
                    continue
                result = results[key]
                if isinstance(result, BaseException):  # this item alone failed
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _forget(self, futures: dict[K, asyncio.Future[R]]) -> None:
        for key, future in futures.items():
            if self._running_futures.get(key) is future:
                del self._running_futures[key]

    async def close(self) -> None:
        """Send what is pending and wait for every batch in flight."""
        self._flush()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved here so a batch whose waiters all left does not log "never retrieved"
