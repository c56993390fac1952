"""Partition planning, splitting and the progress reporter (no services)."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime

from square_mirror.timefmt import rfc3339_ms
from worker.backfill.partition import Partition, Planner, created_ms, plan_partitions
from worker.backfill.progress import Progress, _PlainBar, terminal_reporter
from worker.runs import FAILED, INTERRUPTED, PARTIAL, SUCCEEDED, status_for


def test_plan_covers_everything_with_open_outer_ranges() -> None:
    parts = plan_partitions(1_000, 101_000, 50_000, concurrency=4)
    assert len(parts) == 4
    assert parts[0].start is None and parts[-1].end is None
    for left, right in itertools.pairwise(parts):
        assert left.end == right.start  # contiguous, no gap
    assert plan_partitions(None, None, 0, 8) == [Partition(None, None)]
    assert len(plan_partitions(5, 5, 1, 8)) == 1  # a single instant cannot be split


def test_time_range_widens_by_a_millisecond_each_side() -> None:
    part = Partition(1_700_000_000_000, 1_700_000_100_000)
    assert part.time_range() == {"start_at": rfc3339_ms(1_699_999_999_999), "end_at": rfc3339_ms(1_700_000_100_001)}
    part.advance(1_700_000_050_000, 100)  # resumes from the last committed customer, inclusive
    assert part.time_range()["start_at"] == rfc3339_ms(1_700_000_049_999)
    assert Partition(None, None).time_range() == {}


def test_created_ms_parses_square_timestamps() -> None:
    ms = created_ms({"created_at": "2022-11-09T21:23:25.519Z"})
    assert ms == int(datetime(2022, 11, 9, 21, 23, 25, 519000, tzinfo=UTC).timestamp() * 1000)


def test_idle_worker_splits_the_densest_running_partition() -> None:
    planner = Planner(plan_partitions(0, 1_000_000, 10_000, concurrency=1), (0, 1_000_000))
    part = planner.take()
    assert part is not None and part.active
    assert planner.take() is None  # nothing measured yet: no split
    part.advance(100_000, 1_000)  # 1,000 customers in the first 10% -> ~9,000 left
    upper = planner.take()
    assert upper is not None and part.restart
    assert part.end == upper.start == 550_000 and upper.end is None
    part.done = True
    upper.done = True
    assert planner.complete()
    restored = Planner.from_checkpoint(planner.to_checkpoint(), [0, 1_000_000])
    assert restored.complete() and len(restored.partitions) == 2


def test_status_rule_never_calls_a_failed_run_a_success() -> None:
    from square_mirror.square_api import SquareRateLimited, SquareUnauthorized

    assert status_for(None, {"errors": 0}) == SUCCEEDED
    assert status_for(None, {"errors": 2}) == PARTIAL
    assert status_for(SquareRateLimited("429"), {"pages": 3}) == PARTIAL
    assert status_for(SquareRateLimited("429"), {"pages": 0}) == FAILED
    assert status_for(SquareUnauthorized("401", merchant_id="M"), {"pages": 9}) == FAILED
    assert status_for(RuntimeError("boom"), {"pages": 9}) == FAILED
    import asyncio

    assert status_for(asyncio.CancelledError(), {}) == INTERRUPTED
    assert status_for(KeyboardInterrupt(), {}) == INTERRUPTED


def test_progress_bar_and_log_lines() -> None:
    stream = io.StringIO()
    assert terminal_reporter("x", stream) is None  # not a TTY: log lines instead
    bar = _PlainBar("backfill M", stream)
    progress = Progress(label="backfill", merchant_id="M", total=1000, reporter=bar)
    bar._last = -1.0
    progress.advance(500, pages=5)
    assert "500/1000" in stream.getvalue() and "ETA" in stream.getvalue()
    assert progress.eta_seconds is not None
    progress.close()
