"""Soak and load: sustained webhook traffic at a fixed rate through a real receiver and real workers.

    PYTHONPATH=. .venv/bin/python bench/load.py [--minutes 2] [--rate 100] [--workers 1] [--customers 3000]
    PYTHONPATH=. .venv/bin/python bench/load.py --find-max [--start-rate 50] [--step-seconds 30]

What runs: the Square emulator (``latency_ms=50`` on every API call), one ``square-mirror webhooks`` and
``--workers`` ``square-mirror worker`` processes, started as real processes exactly as ``square-mirror demo``
starts them (``square_mirror.devstack``), on a private Redis (so the shared one's queue is never touched) and a fresh
database on the local Postgres (``--database-url``), both removed at the end. The mirror is backfilled first.

How events are made: this process edits customers through the emulator's Dashboard API (``PATCH
/_emulator/customers/{id}``) on a fixed open-loop schedule of ``--rate`` edits/s, each a random customer out of
``--customers``. Every edit really bumps the profile's version and makes the emulator sign and deliver a
``customer.updated`` webhook to the receiver, and the worker's fetch returns the real profile. This exercises the
whole path Square would (delivery, signature, enqueue, fetch at 50 ms, version-guarded upsert), which synthesised
envelopes would not; the admin API has no latency knob, so the driver itself is not slowed down.

Figures printed:
- achieved edit rate (edits the driver completed / seconds) and webhook deliveries;
- event-to-row lag: ``webhook_events.processed_at - received_at`` (receiver's receipt to the committed row),
  p50/p99/max (the event's ``created_at`` is whole seconds in Square's envelopes, too coarse to measure from);
- queue depth (``ZCARD`` of the queue) and RSS (``VmRSS``) of every process every ``--sample-seconds``, and
  RSS at start and end of the load (after the backfill and a warm-up);
- errors: failed edits, deliveries the receiver did not answer 2xx, receiver outcomes other than
  enqueued/duplicate, events recorded ``failed`` or with an error, ERROR lines in the logs, processes that died,
  and the final convergence check (``mirror_diff`` against the emulator's truth, which must be empty).

``--find-max`` steps the rate up (x1.5 per step, each step ``--step-seconds`` then a drain) until the p99 lag
reaches 1 s or the driver cannot keep up, and prints the highest rate whose p99 stayed under 1 s.

Its figures, with the commands that produced them, are in docs/performance.md (Soak and load).
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# bench/ holds emulator.py, which would shadow the emulator package when this file runs as a script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import asyncio
import random
import re
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from redis.asyncio import Redis

from square_mirror.constants import QUEUE_NAME
from square_mirror.convergence import mirror_diff
from square_mirror.db import create_pool, migrate
from square_mirror.devstack import EmulatorClient, Stack, cli_command, run_cli, wait_for
from square_mirror.embedded import EmbeddedRedis, free_port, tcp_reachable

ROOT = os.path.dirname(_HERE)
LAG_GOAL_S = 1.0


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (``VmRSS`` in /proc), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def due_queue_empty(redis: Redis) -> bool:
    """No job due and no event job running. Jobs deferred into the future (a lane's retry, say) do not count:
    waiting for them would only stretch the drain."""
    due = await redis.zcount(QUEUE_NAME, 0, int(time.time() * 1000))
    return due == 0 and await _queue_empty_running(redis)


async def _queue_empty_running(redis: Redis) -> bool:
    """No event job running (the reconcile lanes' cron jobs run for a while at 50 ms a call; not waited for)."""
    async for key in redis.scan_iter(match="arq:in-progress:*", count=1000):
        if not key.startswith(b"arq:in-progress:reconcile"):
            return False
    return True


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Pipeline:
    """The started processes and how to reach them."""

    stack: Stack
    square: EmulatorClient
    dsn: str
    redis: Redis
    receiver_port: int
    pids: dict[str, int] = field(default_factory=dict)

    def rss(self) -> dict[str, int]:
        return {name: rss_kib(pid) for name, pid in self.pids.items()}

    def dead(self) -> list[str]:
        return [f"{name} (exit {proc.returncode})" for name, proc in self.stack.processes
                if name in self.pids and proc.poll() is not None]


@dataclass
class StepResult:
    rate: float
    seconds: float
    edits: int
    edit_errors: int
    events: int
    lags: list[float]
    unprocessed: int
    samples: list[tuple[float, int, dict[str, int]]]

    @property
    def achieved(self) -> float:
        return self.edits / self.seconds if self.seconds else 0.0

    @property
    def p99(self) -> float:
        return pct(self.lags, 0.99) if self.lags else float("inf")


async def drive(pipe: Pipeline, ids: list[str], rate: float, seconds: float, sample_every: float,
                rng: random.Random) -> tuple[int, int, list[tuple[float, int, dict[str, int]]], float]:
    """Edit customers at ``rate``/s on a fixed schedule for ``seconds``; sample queue depth and RSS meanwhile."""
    edits = errors = 0
    in_flight: set[asyncio.Task[None]] = set()
    samples: list[tuple[float, int, dict[str, int]]] = []
    limit = asyncio.Semaphore(256)

    async def edit(n: int) -> None:
        nonlocal edits, errors
        async with limit:
            try:
                await pipe.square.admin("PATCH", f"/customers/{rng.choice(ids)}",
                                        {"note": f"load {n}", "merchant_id": pipe.square.merchant_id})
                edits += 1
            except Exception:  # counted and reported, the run goes on
                errors += 1

    async def sampler() -> None:
        while True:
            samples.append((time.monotonic() - started, await pipe.redis.zcard(QUEUE_NAME), pipe.rss()))
            await asyncio.sleep(sample_every)

    started = time.monotonic()
    sampling = asyncio.create_task(sampler())
    total = int(rate * seconds)
    for n in range(total):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(edit(n))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    elapsed = time.monotonic() - started
    sampling.cancel()
    samples.append((elapsed, await pipe.redis.zcard(QUEUE_NAME), pipe.rss()))
    return edits, errors, samples, elapsed


async def step(pipe: Pipeline, pool: asyncpg.Pool, ids: list[str], rate: float, seconds: float,
               sample_every: float, rng: random.Random, drain_timeout: float = 60.0) -> StepResult:
    """One fixed-rate run, then wait for the queue to drain and read the lags of the events it produced."""
    since = datetime.now(UTC)
    edits, errors, samples, elapsed = await drive(pipe, ids, rate, seconds, sample_every, rng)
    await pipe.square.admin("POST", "/deliveries/drain?timeout=30")
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline and not await due_queue_empty(pipe.redis):  # noqa: ASYNC110 - polling
        await asyncio.sleep(0.2)
    rows = await pool.fetch(
        "SELECT extract(epoch FROM processed_at - received_at)::float8 AS lag"
        " FROM square.webhook_events WHERE source = 'webhook' AND received_at >= $1", since)
    done = [r for r in rows if r["lag"] is not None]
    return StepResult(rate, elapsed, edits, errors, len(rows), [r["lag"] for r in done], len(rows) - len(done),
                      samples)


def print_step(r: StepResult, *, timeline: bool) -> None:
    mib = 1024.0
    print(f"target {r.rate:.0f}/s for {r.seconds:.0f} s: achieved {r.achieved:.1f} edits/s ({r.edits} edits, "
          f"{r.edit_errors} failed), {r.events} webhook events received, {r.unprocessed} not processed")
    if r.lags:
        print(f"  receipt-to-row lag: p50 {pct(r.lags, .5) * 1000:.0f} ms, p99 {pct(r.lags, .99) * 1000:.0f} ms, "
              f"max {max(r.lags) * 1000:.0f} ms")
    if timeline:
        names = list(r.samples[0][2]) if r.samples else []
        print("  " + f"{'t (s)':>6} {'queue':>6} " + " ".join(f"{n + ' MiB':>12}" for n in names))
        for t, depth, rss in r.samples:
            print("  " + f"{t:6.0f} {depth:6d} " + " ".join(f"{rss[n] / mib:12.1f}" for n in names))


async def receiver_outcomes(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for m in re.finditer(r'^square_mirror_webhook_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        outcome = re.search(r'outcome="([^"]*)"', m.group(1))
        if outcome:
            out[outcome.group(1)] = out.get(outcome.group(1), 0.0) + float(m.group(2))
    return out


def error_lines(workdir: Path, names: list[str]) -> int:
    """JSON log lines at level error/critical (or Python tracebacks) in the named processes' logs."""
    count = 0
    for name in names:
        path = workdir / f"{name}.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"level": "error"' in line or '"level":"error"' in line or line.startswith("Traceback"):
                count += 1
    return count


async def start_pipeline(stack: Stack, session: aiohttp.ClientSession, opts: argparse.Namespace, dsn: str,
                         redis_url: str) -> tuple[Pipeline, dict[str, str]]:
    emulator_port, receiver_port = free_port(), free_port()
    key = secrets.token_urlsafe(24)
    hook_url = f"http://127.0.0.1:{receiver_port}/square/webhooks"
    emulator = stack.start("emulator", cli_command(
        "emulator", "--port", str(emulator_port), "--seed", "11", "--customers", str(opts.customers),
        "--webhook-url", hook_url, f"--signature-key={key}", "--latency-ms", str(opts.latency_ms)),
        {**os.environ, "PYTHONPATH": ROOT})
    await wait_for(lambda: tcp_reachable("127.0.0.1", emulator_port), "the emulator", timeout=60, proc=emulator)
    seller = orjson.loads((stack.workdir / "emulator.log").read_text().splitlines()[0])["sellers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUARE_")}
    env.update({
        "PYTHONPATH": ROOT, "DATABASE_URL": dsn, "REDIS_URL": redis_url,
        "SQUARE_BASE_URL": f"http://127.0.0.1:{emulator_port}", "SQUARE_ACCESS_TOKEN": seller["token"],
        "SQUARE_MERCHANT_ID": seller["merchant_id"], "SQUARE_WEBHOOK_SIGNATURE_KEY": key,
        "SQUARE_WEBHOOK_NOTIFICATION_URL": hook_url, "SQUARE_MAX_REQUESTS_PER_SECOND": "0",
        "LOG_LEVEL": "WARNING",
    })
    square = EmulatorClient(session, f"http://127.0.0.1:{emulator_port}", seller["token"], seller["merchant_id"])
    pipe = Pipeline(stack, square, dsn, Redis.from_url(redis_url), receiver_port, {"emulator": emulator.pid})
    code = await run_cli(stack, "backfill", ["backfill", "--merchant", seller["merchant_id"], "--no-progress"], env)
    if code != 0:
        raise RuntimeError(f"backfill failed (exit {code})")
    receiver = stack.start("receiver", cli_command("webhooks", "--host", "127.0.0.1", "--port", str(receiver_port)),
                           env)
    pipe.pids["receiver"] = receiver.pid
    for n in range(opts.workers):
        port = free_port()
        worker = stack.start(f"worker{n + 1}", cli_command("worker"), {**env, "WORKER_METRICS_PORT": str(port)})
        await wait_for(lambda p=port: tcp_reachable("127.0.0.1", p), f"worker {n + 1}", timeout=60, proc=worker)
        pipe.pids[f"worker{n + 1}"] = worker.pid
    await wait_for(lambda: tcp_reachable("127.0.0.1", receiver_port), "the receiver", timeout=60, proc=receiver)
    return pipe, env


async def main(opts: argparse.Namespace) -> int:
    stack = Stack(Path(tempfile.mkdtemp(prefix="square-mirror-load-")))
    redis_server = EmbeddedRedis()
    redis_url = redis_server.start()
    db_name = f"sqm_load_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(opts.database_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    dsn = re.sub(r"/[^/?]*(\?|$)", f"/{db_name}\\1", opts.database_url, count=1)
    pool: asyncpg.Pool | None = None
    pipe: Pipeline | None = None
    failures = 0
    try:
        await migrate(dsn)
        pool = await create_pool(dsn, min_size=1, max_size=4)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
            pipe, _env = await start_pipeline(stack, session, opts, dsn, redis_url)
            ids = list((await pipe.square.admin("GET", f"/state?merchant_id={pipe.square.merchant_id}"))
                       ["customers"])
            rng = random.Random(5)
            print(f"emulator latency {opts.latency_ms:g} ms, {len(ids)} customers backfilled, 1 receiver, "
                  f"{opts.workers} worker(s); logs in {stack.workdir}", flush=True)
            await step(pipe, pool, ids, min(opts.rate, 50), 5, 5, rng)  # warm-up: connections, pools, JIT caches
            if opts.find_max:
                best = 0.0
                rate = float(opts.start_rate)
                while True:
                    r = await step(pipe, pool, ids, rate, opts.step_seconds, opts.sample_seconds, rng)
                    print_step(r, timeline=False)
                    ok = r.p99 < LAG_GOAL_S and r.achieved >= 0.95 * rate and not r.edit_errors and not r.unprocessed
                    print(f"  -> {'sustained' if ok else 'NOT sustained'}", flush=True)
                    if not ok:
                        break
                    best = r.achieved
                    rate *= 1.5
                print(f"\nhighest sustained rate with p99 receipt-to-row lag < {LAG_GOAL_S:g} s: {best:.0f} events/s "
                      f"(1 receiver, {opts.workers} worker(s), {opts.latency_ms:g} ms API latency)")
            else:
                rss_start = pipe.rss()
                r = await step(pipe, pool, ids, opts.rate, opts.minutes * 60, opts.sample_seconds, rng)
                rss_end = pipe.rss()
                print_step(r, timeline=True)
                print("RSS start -> end (MiB): " + ", ".join(
                    f"{n} {rss_start[n] / 1024:.1f} -> {rss_end[n] / 1024:.1f} "
                    f"({(rss_end[n] - rss_start[n]) / 1024:+.1f})" for n in rss_start))
                failures += r.edit_errors + r.unprocessed
            outcomes = await receiver_outcomes(session, pipe.receiver_port)
            deliveries = (await pipe.square.admin("GET", "/deliveries"))
            entries = deliveries.get("deliveries", deliveries) if isinstance(deliveries, dict) else deliveries
            bad_deliveries = sum(1 for d in entries if d.get("status") not in ("delivered",))
            failed_events = await pool.fetchval(
                "SELECT count(*) FROM square.webhook_events WHERE outcome = 'failed' OR error IS NOT NULL")
            event_outcomes = dict(await pool.fetch("SELECT outcome, count(*) FROM square.webhook_events GROUP BY 1"))
            truth = await pipe.square.admin("GET", f"/state?merchant_id={pipe.square.merchant_id}")
            diffs = await mirror_diff(pool, truth, pipe.square.merchant_id)
            logged = error_lines(stack.workdir, list(pipe.pids))
            dead = pipe.dead()
            bad_outcomes = {k: v for k, v in outcomes.items() if k not in ("enqueued", "duplicate") and v}
            print(f"receiver outcomes: {outcomes}")
            print(f"event outcomes: {event_outcomes}")
            print(f"errors: deliveries not 2xx-delivered {bad_deliveries}, receiver refusals {bad_outcomes or 0}, "
                  f"events failed/with error {failed_events}, ERROR log lines {logged}, dead processes {dead or 0}, "
                  f"mirror differences from the emulator's truth {len(diffs)}")
            for d in diffs[:10]:
                print(f"  {d}")
            failures += bad_deliveries + int(sum(bad_outcomes.values())) + failed_events + logged + len(dead)
            failures += len(diffs)
    finally:
        if pipe is not None:
            await pipe.redis.aclose()
        if pool is not None:
            await pool.close()
        stack.stop()
        redis_server.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()
    return 1 if failures else 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="soak duration (2)")
    p.add_argument("--rate", type=float, default=100.0, help="events/s of the soak (100)")
    p.add_argument("--find-max", action="store_true", help="step the rate up until p99 lag >= 1 s")
    p.add_argument("--start-rate", type=float, default=50.0, help="first rate of --find-max (50)")
    p.add_argument("--step-seconds", type=float, default=30.0, help="duration of each --find-max step (30)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    p.add_argument("--customers", type=int, default=3000, help="customers seeded and edited at random (3000)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="emulator latency per API request (50)")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="queue depth / RSS sampling period (5)")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="admin DSN of the Postgres to create the bench database in")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
