"""`square-mirror reconcile [--merchant ID | --all] [--lane LANE ...]`: run reconcile lanes once."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import suppress
from typing import Any

import orjson

from square_mirror.settings import Settings
from square_mirror.square_api import SquareError
from worker import runs
from worker.backfill.phases import summarize
from worker.context import Runtime, cancellable, open_runtime, resolve_merchants, setup_logging
from worker.reconcile.lanes import LANES, run_lane

HELP = (
    "Run reconcile lanes once for each merchant: incremental (customers updated since the watermark), segments "
    "(membership diff per segment), groups (membership diff per group), events (SearchEvents replay through the "
    "event worker's queue, deduplicated by event ID) and sweep (full listing + delete/merge inference). "
    "Default: incremental, segments, groups, events. Exit status is non-zero when any run did not succeed."
)
DEFAULT_LANES = ("incremental", "segments", "groups", "events")


def configure(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--merchant", metavar="ID", help="only this merchant")
    who.add_argument("--all", action="store_true", help="every merchant known (the default)")
    parser.add_argument("--lane", action="append", choices=LANES, dest="lanes",
                        help="lane to run (repeatable); default: " + ", ".join(DEFAULT_LANES))


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings)
    return await cancellable(_run(settings, args))


async def _arq_pool(settings: Settings) -> Any:
    """An arq pool for the events lane when REDIS_URL is set (jobs go to the event worker's queue)."""
    if settings.redis_url is None:
        return None
    from arq import create_pool

    from square_mirror.queue import deserialize_job, redis_settings, serialize_job

    return await create_pool(redis_settings(settings.redis_url.reveal()), job_serializer=serialize_job,
                             job_deserializer=deserialize_job)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    lanes = args.lanes or list(DEFAULT_LANES)
    failures = 0
    async with open_runtime(settings) as rt:
        arq_redis = await _arq_pool(settings) if "events" in lanes else None
        try:
            ctx = rt.as_ctx()
            ctx["arq_redis"] = arq_redis
            failures = await _lanes(rt, ctx, args.merchant, lanes)
        finally:
            if arq_redis is not None:
                with suppress(Exception):
                    await arq_redis.aclose()
    return 1 if failures else 0


async def _lanes(rt: Runtime, ctx: dict[str, Any], merchant: str | None, lanes: list[str]) -> int:
    failures = 0
    try:
        merchants = await resolve_merchants(rt, merchant)
    except SquareError as exc:
        print(f"square-mirror: error: cannot find the merchant of SQUARE_ACCESS_TOKEN: {exc}", file=sys.stderr)
        return 1
    for merchant_id in merchants:
        for lane in lanes:
            try:
                summary = dict(summarize(await run_lane(ctx, merchant_id, lane)))
            except runs.RunBusy as exc:
                summary = {"merchant_id": merchant_id, "kind": lane, "status": "busy", "error": str(exc)}
            except asyncio.CancelledError:
                print(orjson.dumps({"merchant_id": merchant_id, "kind": lane, "status": runs.INTERRUPTED}).decode(),
                      flush=True)
                return failures + 1
            if summary["status"] != runs.SUCCEEDED:
                failures += 1
            print(orjson.dumps(summary).decode(), flush=True)
    return failures
