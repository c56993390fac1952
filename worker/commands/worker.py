"""`square-mirror worker`: run the arq sync worker (webhook events, plus backfill and reconcile jobs)."""

from __future__ import annotations

import argparse
import asyncio

from square_mirror.allocator import pin_mmap_threshold
from square_mirror.constants import QUEUES
from square_mirror.logs import configure_logging
from square_mirror.settings import Settings
from worker.app import build_workers, run_workers

HELP = (
    "Run the sync worker: consume the event jobs the webhook receiver enqueues (and backfill / reconcile jobs), "
    "fetch profiles from Square in coalesced batches and write them to DATABASE_URL. Stops gracefully on "
    "SIGTERM (running jobs get WORKER_SHUTDOWN_GRACE_SECONDS to finish). Metrics on WORKER_METRICS_PORT."
)


def _queues(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(QUEUES)}; got {text!r}")
    return list(dict.fromkeys(names))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    parser.add_argument("--queues", type=_queues, default=list(QUEUES), metavar="QUEUES",
                        help="which job queues this process consumes, comma-separated: events (webhook and "
                        "replayed events), lanes (the reconcile lanes and every cron job), backfill; default: all "
                        "three. Run event workers apart from lane and backfill workers so neither waits on the other")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    settings.require_database_url()
    settings.require_redis_url()
    configure_logging(settings.log_level, secrets=settings.secrets())
    pin_mmap_threshold()  # asyncio's 256 KiB read buffers would otherwise fragment the heap without bound
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        workers = build_workers(settings, args.queues, burst=args.burst)
        run_workers(workers)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return 1 if args.burst and any(w.jobs_failed for w in workers) else 0
