"""`square-mirror webhooks`: run the receiver until SIGTERM or SIGINT, then shut down gracefully.

Graceful means: stop accepting connections, let in-flight requests finish (each is bounded by the Redis
timeout, so this takes seconds at most), then close the enqueuer and Redis. An event Square saw a 200 for is
therefore always in the queue, even across a deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from aiohttp import web

HELP: Final = (
    "Run the Square webhook receiver: verifies signed deliveries and queues customer events for the worker. "
    "Needs SQUARE_WEBHOOK_SIGNATURE_KEY, SQUARE_WEBHOOK_NOTIFICATION_URL and REDIS_URL. 'webhooks subscribe' and "
    "'webhooks check' create and check the application's webhook subscription instead."
)
SHUTDOWN_TIMEOUT: Final = 10.0  # seconds to let in-flight requests finish
GC_YOUNG_THRESHOLD: Final = 10_000  # allocations between young-generation collections (CPython's default: 700)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: 8000)")
    from square_mirror.commands import webhook_subscriptions

    actions = parser.add_subparsers(dest="action", metavar="[subscribe | check]", required=False,
                                    help="without one, run the receiver")
    webhook_subscriptions.configure(actions)


async def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) is not None:
        from square_mirror.commands import webhook_subscriptions

        if args.action == "subscribe":
            return await webhook_subscriptions.run_subscribe(args)
        return await webhook_subscriptions.run_check(args)
    # Imported here so `square-mirror --help` does not load aiohttp, Redis and Prometheus.
    from square_mirror.allocator import cap_socket_reads, pin_mmap_threshold
    from square_mirror.logs import configure_logging
    from square_mirror.settings import Settings
    from webhooks.app import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_level, secrets=settings.secrets())
    # See square_mirror/allocator.py: the heap never fragments, and no read costs an mmap either.
    pin_mmap_threshold()
    cap_socket_reads()
    return await serve(create_app(settings), args.host, args.port, path=settings.webhook_path)


async def serve(app: web.Application, host: str, port: int, *, path: str = "") -> int:
    """Serve ``app`` until SIGTERM/SIGINT, then shut down gracefully (the benchmark serves through this too)."""
    from aiohttp import web

    from square_mirror.logs import get_logger
    from webhooks.app import CONNECTION_IDLE_TIMEOUT

    log = get_logger("webhooks")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=CONNECTION_IDLE_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"square-mirror: error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    # Everything alive now (modules, the app) lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise stall the event loop for ~10 ms now and then (p99 latency).
    gc.collect()
    gc.freeze()
    # Requests leave next to no cyclic garbage (reference counting frees them), yet at the default threshold
    # of 700 allocations a young-generation pass ran every ~80 requests under load, traversing and promoting
    # the state of every request in flight: about 1 us of CPU per request, measured in bench/webhooks.py.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("webhooks_listening", host=host, port=port, path=path)
    try:
        await stop.wait()
    finally:
        log.info("webhooks_stopping")
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("webhooks_stopped")
    return 0
