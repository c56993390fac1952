"""Splitting the customer space into ``created_at`` ranges, and splitting dense ranges while they run.

A partition is the half-open range ``[start, end)`` of creation times in epoch milliseconds (``None`` = open on
that side: the first and last partitions are open, so nothing created before the probe's first or after its
last customer escapes). Whether Square's TimeRange bounds are inclusive is UNCONFIRMED, so the request widens
the range by one millisecond on each side; the few customers read twice are deduplicated by the upsert.

``pos`` is the creation time of the last customer of the last committed page: the partition resumes from there
(inclusive, so nothing is skipped), which is what the checkpoint stores instead of a cursor.

When workers run out of partitions, :meth:`Planner.take` splits the running partition with the most estimated
work left at the middle of its remaining range; the running worker notices ``restart`` after its current page
and continues with the narrower range, the idle worker takes the upper half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from square_mirror.square_api import CUSTOMERS_PAGE_LIMIT
from square_mirror.timefmt import epoch_ms, rfc3339_ms

# Partitions small enough that a split would cost more (a restarted query) than it saves.
MIN_SPLIT_CUSTOMERS: Final = 3 * CUSTOMERS_PAGE_LIMIT
TARGET_PARTITION_CUSTOMERS: Final = 500
PARTITIONS_PER_WORKER: Final = 1


def created_ms(customer: dict[str, Any]) -> int:
    """Creation time of a Square customer in epoch milliseconds (floor)."""
    value = customer.get("created_at")
    if not isinstance(value, str):
        raise ValueError("customer without created_at")
    return epoch_ms(value)


@dataclass
class Partition:
    start: int | None
    end: int | None
    pos: int | None = None
    done: bool = False
    seen: int = 0
    active: bool = False
    restart: bool = False

    def time_range(self) -> dict[str, str]:
        low = self.pos if self.pos is not None else self.start
        out: dict[str, str] = {}
        if low is not None:
            out["start_at"] = rfc3339_ms(low - 1)
        if self.end is not None:
            out["end_at"] = rfc3339_ms(self.end + 1)
        return out

    def advance(self, last_created_ms: int, count: int) -> None:
        self.pos = last_created_ms if self.pos is None else max(self.pos, last_created_ms)
        self.seen += count

    def describe(self) -> str:
        return f"[{self.start}, {self.end}) pos={self.pos}"


def plan_partitions(lo: int | None, hi: int | None, total: int | None, concurrency: int) -> list[Partition]:
    """Equal-width creation-time ranges over [lo, hi]; the outer ones are open-ended."""
    if lo is None or hi is None or hi <= lo:
        return [Partition(None, None)]
    wanted = math.ceil((total or TARGET_PARTITION_CUSTOMERS * concurrency) / TARGET_PARTITION_CUSTOMERS)
    count = max(1, min(wanted, concurrency * PARTITIONS_PER_WORKER, hi + 1 - lo))
    width = (hi + 1 - lo) / count
    bounds = [lo + round(width * i) for i in range(count + 1)]
    parts = [Partition(bounds[i], bounds[i + 1]) for i in range(count)]
    parts[0].start = None
    parts[-1].end = None
    return parts


class Planner:
    """Hands out partitions to workers and splits running ones when the queue runs dry."""

    def __init__(self, partitions: Sequence[Partition], bounds: tuple[int | None, int | None] | None) -> None:
        self.partitions = list(partitions)
        self.bounds = bounds

    def remaining(self) -> int:
        return sum(1 for p in self.partitions if not p.done)

    def complete(self) -> bool:
        return all(p.done for p in self.partitions)

    def take(self) -> Partition | None:
        for part in self.partitions:
            if not part.done and not part.active:
                part.active = True
                return part
        return self._split()

    def _density(self, part: Partition) -> float | None:
        """Customers per millisecond seen so far by this partition, or overall."""
        base = part.start if part.start is not None else (self.bounds[0] if self.bounds else None)
        if part.pos is not None and base is not None and part.pos > base and part.seen:
            return part.seen / (part.pos - base)
        return None

    def _split(self) -> Partition | None:
        hi = self.bounds[1] if self.bounds else None
        best: tuple[float, Partition, int, int] | None = None
        for part in self.partitions:
            if part.done or not part.active or part.restart:
                continue
            low = part.pos if part.pos is not None else part.start
            high = part.end if part.end is not None else (hi + 1 if hi is not None else None)
            density = self._density(part)
            if low is None or high is None or density is None or high - low < 4:
                continue
            left = density * (high - low)
            if left >= MIN_SPLIT_CUSTOMERS and (best is None or left > best[0]):
                best = (left, part, low, high)
        if best is None:
            return None
        _, part, low, high = best
        mid = (low + high) // 2
        upper = Partition(mid, part.end, active=True)
        part.end = mid
        part.restart = True
        self.partitions.append(upper)
        return upper

    def to_checkpoint(self) -> list[list[Any]]:
        return [[p.start, p.end, p.pos, p.done, p.seen] for p in self.partitions]

    @classmethod
    def from_checkpoint(cls, rows: Sequence[Sequence[Any]], bounds: Sequence[int | None] | None) -> Planner:
        parts = [Partition(r[0], r[1], r[2], bool(r[3]), int(r[4]) if len(r) > 4 else 0) for r in rows]
        return cls(parts, (bounds[0], bounds[1]) if bounds else None)
