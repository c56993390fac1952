"""`square-mirror redrive`: re-enqueue events the worker recorded as ``failed``.

The job is rebuilt from the inbox's stored PII-free payload, the event's finish is cleared (so the new run is
not a duplicate) and the job is enqueued under the event ID, exactly as the receiver does.
"""

from __future__ import annotations

import argparse
from typing import Any

from arq.connections import ArqRedis

from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.jobs import InvalidEnvelope, read_event_job
from square_mirror.logs import configure_logging, get_logger
from square_mirror.settings import Settings
from worker.context import open_context
from worker.events import inbox
from worker.store import Conn

log = get_logger(__name__)

HELP = (
    "Re-enqueue webhook events whose outcome is 'failed' (see square.webhook_events), rebuilding each job from "
    "its stored payload. Choose them with --event (repeatable), --merchant, or --all-failed."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--merchant", help="only this merchant's failed events")
    parser.add_argument("--event", action="append", default=[], metavar="ID", help="this event ID (repeatable)")
    parser.add_argument("--all-failed", action="store_true", help="every failed event (of --merchant, if given)")
    parser.add_argument("--unfinished-older-than", type=float, metavar="SECONDS",
                        help="also events never finished whose job was lost (a crash on the last try, an expired "
                             "job) and that arrived more than SECONDS ago; a job still queued is left alone")
    parser.add_argument("--dry-run", action="store_true", help="list what would be re-enqueued")


async def redrive(
    pool: Conn | Any, redis: ArqRedis, *, merchant_id: str | None = None, event_ids: list[str] | None = None,
    dry_run: bool = False, unfinished_older_than: float | None = None, failed: bool = True,
) -> tuple[int, int]:
    """Re-enqueue the chosen failed (and, if asked, lost unfinished) events; returns (enqueued, skipped)."""
    enqueued = skipped = 0
    chosen = []
    if failed:
        chosen += await inbox.failed_events(pool, merchant_id=merchant_id, event_ids=event_ids or None)
    if unfinished_older_than is not None:
        chosen += await inbox.unfinished_events(pool, older_than_seconds=unfinished_older_than,
                                                merchant_id=merchant_id)
    for merchant, event_id, payload in chosen:
        try:
            read_event_job(payload)
        except InvalidEnvelope as exc:
            log.warning("redrive_payload_unreadable", merchant_id=merchant, event_id=event_id, error=str(exc))
            skipped += 1
            continue
        if dry_run:
            print(f"would redrive {merchant} {event_id}")
            enqueued += 1
            continue
        await inbox.reopen(pool, merchant, event_id)
        job = await redis.enqueue_job(PROCESS_EVENT_JOB, payload, _job_id=event_id, _queue_name=QUEUE_NAME)
        if job is None:
            skipped += 1  # already queued or running under this ID: it will process the reopened row
        else:
            enqueued += 1
    return enqueued, skipped


async def run(args: argparse.Namespace) -> int:
    if not args.event and not args.all_failed and args.unfinished_older_than is None:
        print("square-mirror redrive: choose events with --event ID, --all-failed or --unfinished-older-than")
        return 2
    settings = Settings.from_env()
    configure_logging(settings.log_level, secrets=settings.secrets())
    settings.require_database_url()
    settings.require_redis_url()
    async with open_context(settings, concurrency=1, enqueue=True) as context:
        assert context.arq_redis is not None  # REDIS_URL is set
        enqueued, skipped = await redrive(
            context.pool, context.arq_redis, merchant_id=args.merchant,
            event_ids=None if args.all_failed else args.event, dry_run=args.dry_run,
            unfinished_older_than=args.unfinished_older_than, failed=bool(args.all_failed or args.event))
    verb = "would re-enqueue" if args.dry_run else "re-enqueued"
    print(f"{verb} {enqueued} event(s); {skipped} skipped")
    return 0
