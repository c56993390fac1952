"""Benchmark: the webhook receiver against a bare aiohttp handler, in the same run, on the same machine.

    PYTHONPATH=. .venv/bin/python bench/webhooks.py [--duration 5] [--connections 64] [--rate 1000]

Each server runs in a process of its own (the receiver exactly as ``create_app`` builds it, logging its JSON
line per request to /dev/null, backed by the real Redis at REDIS_URL, default redis://127.0.0.1:6379/0);
the load generator runs in this process over raw keep-alive HTTP/1.1 connections so that it costs as little
CPU as possible. Every request is a distinct, correctly signed ``customer.updated`` event, so every receiver
request is a real enqueue. Two loads:

* closed loop: ``--connections`` connections each send the next request as soon as the last one is answered
  (throughput, and the latency at saturation);
* open loop: ``--rate`` requests/s on a fixed schedule, latency measured from the scheduled send time (so a
  stalled server cannot hide its queueing delay).

Printed: events/s, p50/p99 latency, and the receiver/bare ratio. The bench writes to its own queue name and
job IDs and deletes them afterwards, so it never touches the real queue or another run's keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from square_mirror.embedded import free_port, tcp_reachable
from webhooks.signature import compute_signature

KEY = "bench-signature-key"
PATH = "/square/webhooks"
HOST = "127.0.0.1"


# ---------------------------------------------------------------- servers (run in child processes)


def serve(kind: str, port: int, redis_url: str, queue_name: str) -> None:
    from aiohttp import web

    from webhooks.cli import serve as serve_app

    if kind == "bare":

        async def ok(_request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post(PATH, ok)
    else:
        from square_mirror.logs import configure_logging
        from square_mirror.settings import Secret, Settings
        from webhooks.app import create_app

        # The receiver's JSON log line per request is rendered and written, to /dev/null.
        level = os.environ.get("BENCH_LOG_LEVEL", "INFO")
        configure_logging(level, stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
        settings = Settings(
            redis_url=Secret(redis_url),
            webhook_signature_keys=(Secret(KEY),),
            webhook_notification_url=notification_url(port),
        )
        app = create_app(settings, queue_name=queue_name)
    # Both served exactly as `square-mirror webhooks` serves (runner, gc.freeze, signals).
    asyncio.run(serve_app(app, HOST, port))


def notification_url(port: int) -> str:
    return f"http://{HOST}:{port}{PATH}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell server cost from machine noise."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    port: int
    pid: int


@contextlib.contextmanager
def server_process(kind: str, redis_url: str, queue_name: str) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--redis-url", redis_url,
         "--queue-name", queue_name],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        deadline = time.monotonic() + 20
        while not tcp_reachable(HOST, port, 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)
        yield Server(port, process.pid)
    finally:
        process.terminate()
        process.wait(15)


# ---------------------------------------------------------------- load generator


def make_requests(port: int, count: int, run_id: str) -> list[bytes]:
    """Distinct signed events, built before the clock starts."""
    url = notification_url(port)
    requests = []
    for n in range(count):
        body = orjson.dumps(
            {
                "merchant_id": "MLBENCH",
                "type": "customer.updated",
                "event_id": f"bench-{run_id}-{n}",
                "created_at": "2024-01-02T03:04:05Z",
                "data": {"type": "customer", "id": f"C{n:09d}",
                         "object": {"customer": {"id": f"C{n:09d}", "version": 1}}},
            }
        )
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"x-square-hmacsha256-signature: {compute_signature(KEY, url, body)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


class Connection:
    """One keep-alive HTTP/1.1 connection sending one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


@dataclass
class Result:
    name: str
    completed: int
    failed: int
    seconds: float
    latencies: list[float]
    server_cpu: float = 0.0  # seconds of server CPU during the load

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.per_second:>9.0f} req/s   p50 {self.percentile(0.50):7.2f} ms   "
            f"p99 {self.percentile(0.99):7.2f} ms   server CPU {self.cpu_per_request:6.1f} us/req "
            f"({100 * self.server_cpu / self.seconds:3.0f}% of a core)   non-2xx {self.failed}"
        )

    @property
    def cpu_per_request(self) -> float:
        return self.server_cpu / max(self.completed, 1) * 1e6


@contextlib.asynccontextmanager
async def connections(port: int, count: int) -> AsyncIterator[list[Connection]]:
    opened = [await Connection.open(port) for _ in range(count)]
    try:
        yield opened
    finally:
        for conn in opened:
            conn.close()


async def closed_loop(name: str, port: int, requests: list[bytes], conns: int, duration: float) -> Result:
    """As fast as the server answers, ``conns`` requests in flight."""
    latencies: list[float] = []
    failed = 0
    cursor = iter(requests)
    async with connections(port, conns) as pool:
        for conn in pool[:8]:  # warm up: first connections, first Redis round trips, script load
            await conn.send(next(cursor))
        stop_at = time.perf_counter() + duration

        async def drive(conn: Connection) -> None:
            nonlocal failed
            for request in cursor:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                status = await conn.send(request)
                latencies.append(time.perf_counter() - started)
                failed += status >= 300

        started = time.perf_counter()
        await asyncio.gather(*(drive(conn) for conn in pool))
        elapsed = time.perf_counter() - started
    return Result(name, len(latencies), failed, elapsed, latencies)


async def open_loop(name: str, port: int, requests: list[bytes], rate: int, duration: float) -> Result:
    """``rate`` requests/s on a fixed schedule; latency counts from the scheduled time."""
    latencies: list[float] = []
    failed = 0
    total = int(rate * duration)
    async with connections(port, 64) as pool:
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in pool:
            idle.put_nowait(conn)
        for n in range(1, 9):  # warm up with the last requests of the list
            conn = await idle.get()
            await conn.send(requests[-n])
            idle.put_nowait(conn)

        async def one(request: bytes, scheduled: float) -> None:
            nonlocal failed
            conn = await idle.get()
            try:
                status = await conn.send(request)
            finally:
                idle.put_nowait(conn)
            latencies.append(time.perf_counter() - scheduled)
            failed += status >= 300

        tasks = []
        start = time.perf_counter() + 0.05
        for n in range(total):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(requests[n], scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return Result(name, len(latencies), failed, elapsed, latencies)


async def cleanup(redis_url: str, queue_name: str, run_id: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    deleted = 0
    try:
        await client.delete(queue_name)
        batch = []
        async for key in client.scan_iter(match=f"arq:*bench-{run_id}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.delete(*batch)
                batch = []
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


async def count_queued(redis_url: str, queue_name: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int(await client.zcard(queue_name))
    finally:
        await client.aclose()


async def batch_stats(port: int) -> str:
    """Enqueue batching seen so far, from the receiver's own /metrics."""
    conn = await Connection.open(port)
    try:
        conn.writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await conn.reader.readuntil(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        text = (await conn.reader.readexactly(length)).decode()
    finally:
        conn.close()
    values = {}
    for line in text.splitlines():
        if line.startswith(("square_mirror_webhook_enqueue_batch_size_", "square_mirror_webhook_enqueue_seconds_")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    batches = values.get("square_mirror_webhook_enqueue_batch_size_count", 0) or 1
    events = values.get("square_mirror_webhook_enqueue_batch_size_sum", 0)
    seconds = values.get("square_mirror_webhook_enqueue_seconds_sum", 0)
    return f"{batches:.0f} Redis round trips, {events / batches:.1f} events and {1000 * seconds / batches:.2f} ms each"


async def measured(server: Server, load: Awaitable[Result]) -> Result:
    cpu_before = cpu_seconds(server.pid)
    result = await load
    result.server_cpu = cpu_seconds(server.pid) - cpu_before
    print(result.line(), flush=True)
    return result


async def main(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    queue_name = f"square-mirror:bench:{run_id}"
    print(f"bench run {run_id}: {args.duration}s per load, {args.connections} connections, open loop "
          f"{args.rate}/s, Redis {args.redis_url.split('@')[-1]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, Result] = {}
    paced_count = int(args.rate * args.duration) + 16
    try:
        for kind in ("bare", "receiver"):
            with server_process(kind, args.redis_url, queue_name) as server:
                requests = make_requests(server.port, args.events, f"{run_id}{kind[0]}c")
                paced = make_requests(server.port, paced_count, f"{run_id}{kind[0]}r")
                name = "bare handler" if kind == "bare" else "receiver"
                results[kind] = await measured(
                    server, closed_loop(f"{name}, closed loop", server.port, requests, args.connections,
                                        args.duration)
                )
                if kind == "receiver":
                    print("   " + await batch_stats(server.port), flush=True)
                results[kind + "@rate"] = await measured(
                    server, open_loop(f"{name}, {args.rate}/s", server.port, paced, args.rate, args.duration)
                )
        queued = await count_queued(args.redis_url, queue_name)
    finally:
        await cleanup(args.redis_url, queue_name, run_id)
    accepted = sum(r.completed - r.failed for k, r in results.items() if k.startswith("receiver")) + 16
    ratio = results["receiver"].per_second / results["bare"].per_second
    cpu_ratio = results["bare"].cpu_per_request / results["receiver"].cpu_per_request
    print(f"receiver / bare throughput: {ratio:.2f}  (goal >= 0.50); by server CPU per request: {cpu_ratio:.2f}")
    print(f"receiver p99 at {args.rate}/s: {results['receiver@rate'].percentile(0.99):.2f} ms  (goal < 50 ms)")
    print(f"jobs in the queue: {queued} for {accepted} accepted requests (warm-up included)")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop concurrency (default 64)")
    parser.add_argument("--rate", type=int, default=1000, help="open-loop requests/s (default 1000)")
    parser.add_argument("--events", type=int, default=120_000, help="distinct signed events to prepare")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--serve", choices=["bare", "receiver"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queue-name", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve(arguments.serve, arguments.port, arguments.redis_url, arguments.queue_name)
        raise SystemExit(0)
    raise SystemExit(asyncio.run(main(arguments)))
