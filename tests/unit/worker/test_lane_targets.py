"""Each lane's cron schedule starts a pass exactly as often as its target interval says (constants)."""

from __future__ import annotations

from arq.cron import CronJob

from square_mirror.constants import LANE_TARGET_SECONDS, cron_job_name
from worker.reconcile.jobs import ARQ_CRON_JOBS


def _interval(job: CronJob) -> int:
    """Seconds between two starts of an evenly spaced arq cron entry (fixed second, at most minutes and hours)."""
    hour, minute = job.hour, job.minute
    if hour is not None:
        assert isinstance(hour, int) and isinstance(minute, int)
        return 86_400
    if minute is None:
        return 60
    minutes = sorted(minute) if isinstance(minute, set) else [minute]
    steps = {b - a for a, b in zip(minutes, [*minutes[1:], minutes[0] + 60], strict=True)}
    assert len(steps) == 1, f"{job.name}: unevenly spaced {minutes}"
    return 60 * steps.pop()


def test_every_lane_is_scheduled_at_its_target_interval() -> None:
    schedules = {job.name: _interval(job) for job in ARQ_CRON_JOBS}
    assert schedules == {cron_job_name(lane): target for lane, target in LANE_TARGET_SECONDS.items()}
