from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker.events.coalescer import FetchCoalescer
from worker.outcome import Outcome
from worker.sync import SyncContext, SyncResult


class FakeSquare:
    def __init__(self, versions: dict[str, int], delay: float = 0.01) -> None:
        self.versions = versions
        self.delay = delay
        self.calls: list[list[str]] = []
        self.fail = False

    async def __call__(self, _ctx: SyncContext, _merchant: str, ids: list[str]) -> SyncResult:
        self.calls.append(list(ids))
        snapshot = {cid: self.versions[cid] for cid in ids}  # read when the request "leaves"
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return SyncResult(outcomes={cid: Outcome.APPLIED for cid in ids}, versions=snapshot)


def _coalescer(fake: FakeSquare, **kw: Any) -> FetchCoalescer:
    return FetchCoalescer(SyncContext(None, None), sync_function=fake, **kw)  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_batch() -> None:
    fake = FakeSquare({f"C{n}": 1 for n in range(50)})
    co = _coalescer(fake, window=0.005)
    results = await asyncio.gather(*(co.fetch("M", f"C{n % 50}", 1) for n in range(200)))
    assert all(r.version == 1 for r in results)
    assert len(fake.calls) == 1 and sorted(fake.calls[0]) == sorted(f"C{n}" for n in range(50))


async def test_batches_hold_at_most_100_ids() -> None:
    fake = FakeSquare({f"C{n}": 0 for n in range(250)})
    co = _coalescer(fake, window=0.005)
    await asyncio.gather(*(co.fetch("M", f"C{n}") for n in range(250)))
    assert sorted(len(c) for c in fake.calls) == [50, 100, 100]


async def test_merchants_are_batched_separately() -> None:
    fake = FakeSquare({"A": 0, "B": 0})
    co = _coalescer(fake)
    await asyncio.gather(co.fetch("M1", "A"), co.fetch("M2", "B"))
    assert sorted(map(tuple, fake.calls)) == [("A",), ("B",)]


async def test_a_fetch_in_flight_that_predates_the_event_is_not_shared() -> None:
    fake = FakeSquare({"A": 1}, delay=0.05)
    co = _coalescer(fake, window=0.001)
    first = asyncio.create_task(co.fetch("M", "A", 1))
    await asyncio.sleep(0.01)  # the first batch has left with version 1
    fake.versions["A"] = 2  # then the customer changes and its event arrives
    second = await co.fetch("M", "A", 2)
    assert (await first).version == 1
    assert second.version == 2 and len(fake.calls) == 2


async def test_errors_reach_every_waiter() -> None:
    fake = FakeSquare({"A": 0, "B": 0})
    fake.fail = True
    co = _coalescer(fake)
    results = await asyncio.gather(co.fetch("M", "A"), co.fetch("M", "B"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    fake.fail = False
    assert (await co.fetch("M", "A")).version == 0


async def test_in_flight_limit_lets_batches_grow_under_load() -> None:
    fake = FakeSquare({f"C{n}": 0 for n in range(60)}, delay=0.03)
    co = _coalescer(fake, window=0.001, max_in_flight=1)

    async def arrive(n: int) -> None:
        await asyncio.sleep(n * 0.001)
        await co.fetch("M", f"C{n}")

    await asyncio.gather(*(arrive(n) for n in range(60)))
    assert len(fake.calls) <= 4


async def test_cancelled_waiter_does_not_cancel_the_batch() -> None:
    fake = FakeSquare({"A": 0, "B": 0}, delay=0.02)
    co = _coalescer(fake)
    waiter = asyncio.create_task(co.fetch("M", "A"))
    other = asyncio.create_task(co.fetch("M", "B"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await other).version == 0
    await co.close()


async def test_a_poison_id_fails_alone_and_shared_failures_fail_all() -> None:
    from square_mirror.square_api import SquareUnavailable

    class Poisoned(FakeSquare):
        async def __call__(self, ctx: SyncContext, merchant: str, ids: list[str]) -> SyncResult:
            if "BAD" in ids:
                self.calls.append(list(ids))
                raise ValueError("bad item")
            return await super().__call__(ctx, merchant, ids)

    fake = Poisoned({"A": 3, "B": 4})
    co = _coalescer(fake)
    results = await asyncio.gather(co.fetch("M", "A"), co.fetch("M", "BAD"), co.fetch("M", "B"),
                                   return_exceptions=True)
    assert [getattr(r, "version", None) for r in results] == [3, None, 4]
    assert isinstance(results[1], ValueError)

    class Down(FakeSquare):
        async def __call__(self, ctx: SyncContext, merchant: str, ids: list[str]) -> SyncResult:
            self.calls.append(list(ids))
            raise SquareUnavailable("down")

    down = Down({})
    co = _coalescer(down)
    results = await asyncio.gather(co.fetch("M", "A"), co.fetch("M", "B"), return_exceptions=True)
    assert all(isinstance(r, SquareUnavailable) for r in results)
    assert len(down.calls) == 1  # not split: one call for the whole batch
