"""The micro-batcher's pacing: batches that are not full start no more often than ``min_interval``."""

from __future__ import annotations

import asyncio

from worker.events.batching import MicroBatcher


async def test_a_paced_key_gathers_items_into_fuller_batches_and_a_full_batch_is_never_held() -> None:
    batches: list[list[str]] = []

    async def run(items: dict[str, None]) -> dict[str, str | BaseException]:
        batches.append(sorted(items))
        return {key: key.upper() for key in items}

    batcher: MicroBatcher[str, None, str] = MicroBatcher(run, window=0.0, max_batch=3, min_interval=3600.0)
    assert await batcher.submit("a", None) == "A"  # nothing ran before: at once
    waiting = [asyncio.ensure_future(batcher.submit(key, None)) for key in ("b", "c")]
    for _ in range(20):
        await asyncio.sleep(0)  # let every ready callback run: the paced batch must still be waiting
    assert batches == [["a"]] and not any(w.done() for w in waiting)
    assert await batcher.submit("d", None) == "D"  # the third item fills the batch: sent without waiting
    assert [w.result() for w in waiting] == ["B", "C"]
    tail = asyncio.ensure_future(batcher.submit("e", None))
    await asyncio.sleep(0)  # "e" joins the pending batch
    await batcher.close()  # close sends what is pending, paced or not
    assert tail.result() == "E"
    assert batches == [["a"], ["b", "c", "d"], ["e"]]


async def test_without_pacing_each_window_sends_its_own_batch() -> None:
    batches: list[list[str]] = []

    async def run(items: dict[str, None]) -> dict[str, str | BaseException]:
        batches.append(sorted(items))
        return dict.fromkeys(items, "ok")

    batcher: MicroBatcher[str, None, str] = MicroBatcher(run, window=0.0)
    for key in ("a", "b"):
        await batcher.submit(key, None)
    assert batches == [["a"], ["b"]]


async def test_a_batch_due_while_others_were_in_flight_still_waits_for_its_pace() -> None:
    release = asyncio.Event()
    batches: list[list[str]] = []

    async def run(items: dict[str, None]) -> dict[str, str | BaseException]:
        batches.append(sorted(items))
        await release.wait()
        return dict.fromkeys(items, "ok")

    batcher: MicroBatcher[str, None, str] = MicroBatcher(run, window=0.0, max_in_flight=1, min_interval=3600.0)
    first = asyncio.ensure_future(batcher.submit("a", None))
    for _ in range(5):
        await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.submit("b", None))  # its window passes while "a" is in flight
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    assert await first == "ok"
    for _ in range(20):
        await asyncio.sleep(0)
    assert batches == [["a"]] and not second.done()  # "a" came back, but "b"'s batch waits for its pace
    await batcher.close()
    assert second.result() == "ok" and batches == [["a"], ["b"]]
