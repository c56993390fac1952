"""`square-mirror reconcile [--merchant ID | --all] [--lane LANE ...]`: run reconcile lanes once."""

from __future__ import annotations

import argparse
import asyncio
import sys

from square_mirror.errors import SquareError
from square_mirror.logs import configure_logging
from square_mirror.settings import Settings
from worker import runs
from worker.backfill.phases import summarize
from worker.commands import cancellable, print_summary
from worker.context import WorkerContext, open_context
from worker.merchants import resolve_merchants
from worker.reconcile.lanes import LANES, run_lane

HELP = (
    "Run reconcile lanes once for each merchant: incremental (customers updated since the watermark), segments "
    "(membership diff per segment), groups (membership diff per group), events (SearchEvents replay through the "
    "event worker's queue, deduplicated by event ID), custom_attributes (definitions re-listed, values changed "
    "since the watermark found per key and read again) and sweep (full listing + delete/merge inference, every "
    "custom attribute holder read again). Default: every lane but sweep. Exit status is non-zero when any run "
    "did not succeed."
)
DEFAULT_LANES = ("incremental", "segments", "groups", "events", "custom_attributes")


def configure(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--merchant", metavar="ID", help="only this merchant")
    who.add_argument("--all", action="store_true", help="every merchant known (the default)")
    parser.add_argument("--lane", action="append", choices=LANES, dest="lanes",
                        help="lane to run (repeatable); default: " + ", ".join(DEFAULT_LANES))


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level, secrets=settings.secrets())
    return await cancellable(_run(settings, args))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    lanes = args.lanes or list(DEFAULT_LANES)
    # With REDIS_URL, the events lane queues replayed events for the event worker (else it applies them by ID).
    async with open_context(settings, enqueue="events" in lanes) as context:
        failures = await _lanes(context, args.merchant, lanes)
    return 1 if failures else 0


async def _lanes(context: WorkerContext, merchant: str | None, lanes: list[str]) -> int:
    failures = 0
    try:
        merchants = await resolve_merchants(context, merchant)
    except SquareError as exc:
        print(f"square-mirror: error: cannot find the merchant of SQUARE_ACCESS_TOKEN: {exc}", file=sys.stderr)
        return 1
    for merchant_id in merchants:
        for lane in lanes:
            try:
                summary = dict(summarize(await run_lane(context, merchant_id, lane)))
            except runs.RunBusy as exc:
                summary = {"merchant_id": merchant_id, "kind": lane, "status": runs.BUSY, "error": str(exc)}
            except asyncio.CancelledError:
                print_summary({"merchant_id": merchant_id, "kind": lane, "status": runs.INTERRUPTED})
                return failures + 1
            if summary["status"] != runs.SUCCEEDED:
                failures += 1
            print_summary(summary)
    return failures
