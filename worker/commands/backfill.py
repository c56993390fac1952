"""`square-mirror backfill [--merchant ID | --all] [--full]`: a complete, resumable backfill per merchant."""

from __future__ import annotations

import argparse
import asyncio
import sys

from square_mirror.errors import SquareError
from square_mirror.logs import configure_logging
from square_mirror.settings import Settings
from worker import runs
from worker.backfill.phases import BACKFILL, backfill, summarize
from worker.backfill.progress import terminal_reporter
from worker.commands import cancellable, print_summary
from worker.context import open_context
from worker.merchants import resolve_merchants

HELP = (
    "Copy every group, segment and customer of each merchant into the mirror, then infer deletes and merges "
    "(mirror rows the listing did not return are checked by ID), and copy the customers' custom attributes "
    "(only customers that hold values are read: BACKFILL_CUSTOM_ATTRIBUTE_CONCURRENCY at once). Partitions are "
    "fetched concurrently (BACKFILL_CONCURRENCY) within the shared rate limit. A killed or failed backfill "
    "resumes from its last checkpoint; --full starts over. Each merchant gets its own run in square.sync_runs; "
    "the exit status is non-zero when any merchant's run did not succeed."
)


def configure(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--merchant", metavar="ID", help="only this merchant")
    who.add_argument("--all", action="store_true",
                     help="every merchant known (tokens file, SQUARE_MERCHANT_ID, the mirror); the default")
    parser.add_argument("--full", action="store_true", help="ignore any checkpoint and start a new listing")
    parser.add_argument("--concurrency", type=int, default=None, help="partitions fetched at once "
                        "(default BACKFILL_CONCURRENCY)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level, secrets=settings.secrets())
    return await cancellable(_run(settings, args))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    concurrency = args.concurrency or settings.backfill_concurrency
    reporter = None if args.no_progress else (lambda label, _mid: terminal_reporter(label))
    failures = 0
    async with open_context(settings, concurrency=concurrency) as context:
        try:
            merchants = await resolve_merchants(context, args.merchant)
        except SquareError as exc:
            print(f"square-mirror: error: cannot find the merchant of SQUARE_ACCESS_TOKEN: {exc}", file=sys.stderr)
            return 2
        for merchant_id in merchants:
            try:
                result = await backfill(context.sync, merchant_id, full=args.full, concurrency=concurrency,
                                        attribute_concurrency=settings.backfill_custom_attribute_concurrency,
                                        kind=BACKFILL, reporter=reporter)
                summary = dict(summarize(result))
            except runs.RunBusy as exc:
                summary = {"merchant_id": merchant_id, "kind": BACKFILL, "status": runs.BUSY, "error": str(exc)}
            except asyncio.CancelledError:
                print_summary({"merchant_id": merchant_id, "status": runs.INTERRUPTED})
                return 130
            if summary["status"] != runs.SUCCEEDED:
                failures += 1
            print_summary(summary)
    return 1 if failures else 0
