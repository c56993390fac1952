"""Benchmark: the webhook receiver against a bare aiohttp handler, in the same run, on the same machine.

    PYTHONPATH=. .venv/bin/python bench/webhooks.py [--rounds 3] [--duration 5] [--connections 64] [--rate 1000]

Each server runs in a process of its own, served by the same code as ``square-mirror webhooks``
(``webhooks.cli.serve``): the receiver exactly as ``create_app`` builds it, writing its JSON log line per request
to /dev/null, backed by the real Redis at REDIS_URL (default redis://127.0.0.1:6379/0); the bare handler only
returns 200. The load generator runs in this process over hand-parsed keep-alive HTTP/1.1 connections, so that
it costs as little CPU as possible. Every receiver request is a distinct, correctly signed ``customer.updated``
event, so every one is a real enqueue. Two loads, alternated between the two servers for ``--rounds`` rounds:

* closed loop: ``--connections`` connections each send the next request as soon as the last one is answered
  (throughput, and the latency at saturation);
* open loop: ``--rate`` requests/s on a fixed schedule, latency measured from the scheduled send time (so a
  stalled server cannot hide its queueing delay).

Printed per load: requests/s, p50/p99 latency, and the server process's CPU time per request (from /proc),
which is what to compare when the machine is shared: throughput also moves with whatever else runs, and the
bare handler can outrun a one-process load generator. Summary: best-round throughput and the ratio, median
CPU per request and its ratio, open-loop p50/p99. The bench writes to a queue name and job IDs of its own and
deletes them afterwards, so it never touches the real queue or another run's keys.

Each round starts fresh server processes: how fast one process runs varies from one start to the next (heap
layout, hash seeds), and fresh processes spread that luck over the rounds instead of giving it to one side for a
whole run.

A/B comparison of two code states: ``--baseline DIR`` also runs the receiver of another checkout (for example
``git worktree add --detach /tmp/before HEAD~1``) as a third server, in the same rounds, the two receivers taking
turns at going first. The summary then adds receiver / baseline: throughput and CPU per request, median of
rounds. This is the figure to compare two versions by; figures from two separate runs are not comparable on a
shared machine.

Environment knobs for experiments: BENCH_LOG_LEVEL=WARNING drops the receiver's per-request log line (to see
its cost), BENCH_MAX_IN_FLIGHT=N sets the enqueuer's concurrent Redis round trips (default: the receiver's, 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis.asyncio as aioredis

# A server process imports the code of the checkout it serves (see --baseline); the load generator, this one's.
sys.path.insert(0, os.environ.get("BENCH_SOURCE") or str(Path(__file__).resolve().parent.parent))

from square_mirror.embedded import free_port, tcp_reachable
from webhooks.signature import compute_signature

SOURCE_ENV = "BENCH_SOURCE"
KEY = "bench-signature-key"
PATH = "/square/webhooks"
HOST = "127.0.0.1"


# ---------------------------------------------------------------- servers (run in child processes)


def serve(kind: str, port: int, redis_url: str, queue_name: str) -> None:
    from aiohttp import web

    from square_mirror.allocator import cap_socket_reads, pin_mmap_threshold
    from webhooks.cli import serve as serve_app

    pin_mmap_threshold()  # as `square-mirror webhooks` does, for both servers
    cap_socket_reads()

    if kind == "bare":

        async def ok(_request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post(PATH, ok)
    else:
        from square_mirror.logs import configure_logging
        from square_mirror.settings import Secret, Settings
        from webhooks.app import create_app
        from webhooks.enqueue import MAX_IN_FLIGHT

        # The receiver's JSON log line per request is rendered and written, to /dev/null.
        level = os.environ.get("BENCH_LOG_LEVEL", "INFO")
        configure_logging(level, stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
        settings = Settings(
            redis_url=Secret(redis_url),
            webhook_signature_keys=(Secret(KEY),),
            webhook_notification_url=notification_url(port),
        )
        app = create_app(settings, queue_name=queue_name,
                         max_in_flight=int(os.environ.get("BENCH_MAX_IN_FLIGHT", str(MAX_IN_FLIGHT))))
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
def server_process(kind: str, redis_url: str, queue_name: str, source: Path | None = None) -> Iterator[Server]:
    """A server of ``kind`` ("bare" or "receiver") serving the code of the checkout ``source`` (default: this one)."""
    port = free_port()
    source = (source or Path(__file__).resolve().parent.parent).resolve()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--redis-url", redis_url,
         "--queue-name", queue_name],
        env={**os.environ, "PYTHONPATH": str(source), SOURCE_ENV: str(source)},
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


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending one request at a time, parsed by hand to stay cheap."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[int] | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        _transport, protocol = await asyncio.get_running_loop().create_connection(cls, HOST, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end_of_head = self.buffer.find(b"\r\n\r\n")
        if end_of_head < 0:
            return
        head = self.buffer[:end_of_head]
        length = 0
        at = head.lower().find(b"content-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15 : line_end if line_end > 0 else len(head)])
        end = end_of_head + 4 + length
        if len(self.buffer) < end:
            return
        self.body = self.buffer[end_of_head + 4 : end]
        self.buffer = self.buffer[end:]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("closed"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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


async def closed_loop(
    name: str, port: int, requests: list[bytes], conns: int, duration: float, *, repeat: bool = False
) -> Result:
    """As fast as the server answers, ``conns`` requests in flight; stops early if ``requests`` run out."""
    latencies: list[float] = []
    failed = 0
    cursor = itertools.cycle(requests) if repeat else iter(requests)
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


async def enqueue_counters(port: int) -> tuple[float, float, float]:
    """(round trips, events, seconds) of the receiver's enqueue batches so far, from its own /metrics."""
    conn = await Connection.open(port)
    try:
        await conn.send(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        text = conn.body.decode()
    finally:
        conn.close()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("square_mirror_webhook_enqueue_batch_size_", "square_mirror_webhook_enqueue_seconds_")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return (
        values.get("square_mirror_webhook_enqueue_batch_size_count", 0.0),
        values.get("square_mirror_webhook_enqueue_batch_size_sum", 0.0),
        values.get("square_mirror_webhook_enqueue_seconds_sum", 0.0),
    )


def batch_line(counters: tuple[float, float, float]) -> str:
    trips, events, seconds = counters
    trips = trips or 1
    return f"{trips:.0f} Redis round trips, {events / trips:.1f} events and {1000 * seconds / trips:.2f} ms each"


async def measured(server: Server, load: Awaitable[Result]) -> Result:
    cpu_before = cpu_seconds(server.pid)
    result = await load
    result.server_cpu = cpu_seconds(server.pid) - cpu_before
    print(result.line(), flush=True)
    return result


async def main(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    queue_name = f"square-mirror:bench:{run_id}"
    print(f"bench run {run_id}: {args.rounds} rounds of {args.duration}s per load, {args.connections} connections, "
          f"open loop {args.rate}/s, Redis {args.redis_url.split('@')[-1]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}" + (f", baseline {args.baseline}" if args.baseline else ""), flush=True)
    rounds: list[dict[str, Result]] = []
    paced_count = int(args.rate * args.duration) + 16
    receivers = ["receiver", "baseline"] if args.baseline else ["receiver"]
    try:
        for number in range(args.rounds):
            print(f"round {number + 1}", flush=True)
            # The receivers take turns at going first, so neither always runs right after the bare handler.
            order = ["bare", *(receivers if number % 2 == 0 else receivers[::-1])]
            results: dict[str, Result] = {}
            with contextlib.ExitStack() as stack:  # fresh processes each round (see the docstring)
                servers = {kind: stack.enter_context(server_process(
                    "bare" if kind == "bare" else "receiver", args.redis_url, queue_name,
                    Path(args.baseline) if kind == "baseline" else None)) for kind in order}
                for kind in order:
                    server = servers[kind]
                    requests = make_requests(server.port, args.events, f"{run_id}-{kind}-{number}c")
                    results[kind] = await measured(server, closed_loop(
                        f"  {kind}, closed loop", server.port, requests, args.connections, args.duration,
                        repeat=kind == "bare"))
                for kind in receivers:
                    print(f"    {kind}: " + batch_line(await enqueue_counters(servers[kind].port)), flush=True)
                for kind in order:
                    server = servers[kind]
                    paced = make_requests(server.port, paced_count, f"{run_id}-{kind}-{number}r")
                    results[kind + "@rate"] = await measured(server, open_loop(
                        f"  {kind}, {args.rate}/s", server.port, paced, args.rate, args.duration))
            rounds.append(results)
        queued = await count_queued(args.redis_url, queue_name)
    finally:
        await cleanup(args.redis_url, queue_name, run_id)

    def best(key: str) -> Result:
        return max((r[key] for r in rounds), key=lambda result: result.per_second)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    accepted = sum(r[k].completed - r[k].failed + 8 for r in rounds for k in r if not k.startswith("bare"))
    bare_best, receiver_best = best("bare"), best("receiver")
    print("summary")
    print(f"  bare handler: {bare_best.per_second:.0f} req/s (best round), "
          f"{median([r['bare'].cpu_per_request for r in rounds]):.1f} us server CPU per request (median)")
    for kind in receivers:
        kind_best = best(kind)
        print(f"  {kind + ':':<13} {kind_best.per_second:.0f} events/s (best round), "
              f"{median([r[kind].cpu_per_request for r in rounds]):.1f} us server CPU per request (median); "
              f"closed-loop p50 {kind_best.percentile(0.5):.2f} ms, p99 {kind_best.percentile(0.99):.2f} ms")
    ratios = [r["receiver"].per_second / r["bare"].per_second for r in rounds]
    cpu_ratios = [r["bare"].cpu_per_request / r["receiver"].cpu_per_request for r in rounds]
    print(f"  receiver / bare throughput: {receiver_best.per_second / bare_best.per_second:.2f} best vs best, "
          f"{median(ratios):.2f} median of rounds (goal >= 0.50); by server CPU per request: "
          f"{median(cpu_ratios):.2f}")
    if args.baseline:
        base_ratios = [r["baseline"].per_second / r["bare"].per_second for r in rounds]
        base_cpu_ratios = [r["bare"].cpu_per_request / r["baseline"].cpu_per_request for r in rounds]
        print(f"  baseline / bare throughput: {best('baseline').per_second / bare_best.per_second:.2f} best vs best, "
              f"{median(base_ratios):.2f} median of rounds; by server CPU per request: {median(base_cpu_ratios):.2f}")
        ab = [r["receiver"].per_second / r["baseline"].per_second for r in rounds]
        ab_cpu = [r["receiver"].cpu_per_request / r["baseline"].cpu_per_request for r in rounds]
        print(f"  receiver / baseline: throughput {median(ab):.3f} median of rounds "
              f"({', '.join(f'{x:.3f}' for x in ab)}); CPU per request {median(ab_cpu):.3f} "
              f"({', '.join(f'{x:.3f}' for x in ab_cpu)})")
    for kind in receivers:
        p50s = [r[kind + "@rate"].percentile(0.5) for r in rounds]
        p99s = [r[kind + "@rate"].percentile(0.99) for r in rounds]
        print(f"  {kind} at {args.rate}/s: p50 {median(p50s):.2f} ms, p99 {median(p99s):.2f} ms median of rounds "
              f"(worst {max(p99s):.2f} ms; goal < 50 ms)")
    bare_p99s = [r["bare@rate"].percentile(0.99) for r in rounds]
    print(f"  bare at {args.rate}/s: p99 {median(bare_p99s):.2f} ms median of rounds")
    print(f"  jobs in the queue: {queued} for {accepted} accepted requests (warm-up included)")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop concurrency (default 64)")
    parser.add_argument("--rate", type=int, default=1000, help="open-loop requests/s (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best and median reported")
    parser.add_argument("--events", type=int, default=60_000, help="distinct signed events per closed loop")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run the receiver of the checkout DIR, alternating with this one (A/B)")
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
