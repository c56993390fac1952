"""Benchmark the sync worker: events from enqueue to committed rows, against arq's own no-op throughput.

Usage: PYTHONPATH=. python bench/sync.py [--customers 300] [--updates 10] [--latencies 0,50]
                                           [--paced-rate 500] [--paced-seconds 5]

What runs where:
- the emulator runs in this process (it plays Square, with ``latency_ms`` per request);
- the worker is a real ``square-mirror worker`` subprocess with the production settings (max_jobs 200,
  poll_delay 0.05 s), on a private Redis (redis-server on a free port) and a fresh database on the local
  Postgres (``--database-url``), both removed at the end;
- the baseline is the same arq settings running a no-op ``process_event`` in a subprocess: stock arq (the
  baseline the goal is stated against), and also the project's own Worker subclass, whose batched job claims
  and finishes make a no-op job cheaper (the second ratio says what the real work costs on top of the
  worker's own machinery).

Scenarios:
- burst: ``customers x updates`` update events made in the emulator, then enqueued at once (what a backlog
  after an outage, or a bulk edit in the Dashboard, looks like). Prints events/s, the ratio to the no-op
  baseline, p50/p99 event-to-row lag (enqueue -> processed_at) and Square API calls per event.
- attributes: the burst with custom-attribute events instead (``customers x updates`` values of a seller's Dashboard
  field set and changed, one ``customer.custom_attribute.visible.updated`` each) for customers the mirror already
  holds: the steady state, where the goal is 0 Square requests per event.
- paced: every 10 ms a few customers are updated in the emulator and their events enqueued at once, at
  ``--paced-rate`` events/s for ``--paced-seconds``; each event names a version the mirror does not have yet,
  so the worker must fetch. Prints the same figures.
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
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job as arq_serialize_job
from redis.asyncio import Redis

from emulator.config import EmulatorConfig, Knobs
from emulator.testing import run_emulator
from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.db import migrate
from square_mirror.embedded import EmbeddedRedis, free_port
from square_mirror.jobs import build_event_job
from square_mirror.queue import serialize_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
baseline_cpu_ms: dict[str, list[float]] = {"arq": [], "ours": []}


# -- the no-op baseline worker (runs as a subprocess: python bench/sync.py --noop-worker arq|ours) ----------

def noop_worker(kind: str) -> int:
    from arq.worker import Worker, func

    from square_mirror.settings import Settings
    from worker.app import RedisTolerantWorker, worker_options

    async def process_event(_ctx: dict[str, Any], _payload: dict[str, Any]) -> None:
        return None

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    options = worker_options(Settings.from_env())
    worker_class = Worker if kind == "arq" else RedisTolerantWorker
    worker_class(functions=[func(process_event, name=PROCESS_EVENT_JOB, keep_result=0)], **options).run()
    return 0


# -- helpers -----------------------------------------------------------------------------------------------

async def enqueue(redis: Redis, payloads: list[dict[str, Any]]) -> None:
    """What the receiver does for each event: the arq job under the event ID, in pipelined batches."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for payload in payloads:
            data = arq_serialize_job(PROCESS_EVENT_JOB, (payload,), {}, None, now_ms, serializer=serialize_job)
            pipe.psetex(job_key_prefix + payload["event_id"], expires_extra_ms, data)
            pipe.zadd(QUEUE_NAME, {payload["event_id"]: now_ms})
        await pipe.execute()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scrape_api_calls(session: aiohttp.ClientSession, port: int) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    if os.environ.get("BENCH_DEBUG"):
        print("\n".join(line for line in text.splitlines() if "batch_size" in line or "requests_total" in line))
    # The Events API's calls are the events lane's, which the worker queues once for a seller it sees for the
    # first time (the bench's fresh database): not a cost of processing events.
    return sum(float(m.group(2)) for m in re.finditer(r"^square_mirror_square_requests_total\{([^}]*)\} (\S+)$",
                                                       text, re.M)
               if 'endpoint="SearchEvents"' not in m.group(1) and 'endpoint="EnableEvents"' not in m.group(1))


async def wait_for_metrics(session: aiohttp.ClientSession, port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise RuntimeError("worker exited at start-up")
        try:
            await scrape_api_calls(session, port)
            return
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
    raise RuntimeError("worker metrics never came up")


async def start_process(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, *args, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- scenarios ---------------------------------------------------------------------------------------------

async def baseline(redis: Redis, env: dict[str, str], count: int, kind: str) -> float:
    await redis.flushdb()
    proc = await start_process([os.path.join(ROOT, "bench", "sync.py"), "--noop-worker", kind], env)
    try:
        await asyncio.sleep(1.5)  # start-up
        payloads = [build_event_job({  # the same payload shape and size as the real events
            "merchant_id": "MLEMULATOR001", "type": "customer.updated", "event_id": str(uuid.uuid4()),
            "created_at": now_iso(), "data": {"type": "customer", "id": uuid.uuid4().hex[:26].upper(),
                                              "object": {"customer": {"version": 7}}}}, received_at=now_iso())
            for _ in range(count)]
        started = time.perf_counter()
        await enqueue(redis, payloads)
        cpu_before = cpu_seconds(proc.pid)
        while await redis.zcard(QUEUE_NAME):  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.01)
        rate = count / (time.perf_counter() - started)
        baseline_cpu_ms[kind].append(1000 * (cpu_seconds(proc.pid) - cpu_before) / count)
        return rate
    finally:
        await stop_process(proc)


async def attribute_events(emu: Any, state: Any, ids: list[str], updates: int, dsn: str) -> list[dict[str, Any]]:
    """Payloads of ``len(ids) x updates`` custom-attribute events (a Dashboard field set, then changed), for
    customers written to the mirror beforehand (as a backfill would have), so no event needs a Square request."""
    from square_mirror.db import connect
    from worker.store import upsert_customers

    conn = await connect(dsn)
    try:
        profiles = [state.customers[cid].doc for cid in ids]
        await upsert_customers(conn, emu.merchant_id, profiles, datetime.now(UTC), listed=True)
    finally:
        await conn.close()
    seen = len(state.events.entries)
    key = await emu.define_custom_attribute({"name": "Favorite drink", "schema": {
        "$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}},
        owner="square")
    for round_ in range(updates):
        await asyncio.gather(*(emu.set_custom_attribute(cid, key, f"Drink {round_}") for cid in ids))
    received = now_iso()
    return [build_event_job(e, received_at=received) for _ts, e in state.events.entries[seen:]
            if e["type"] == "customer.custom_attribute.visible.updated"]


async def run_scenario(kind: str, latency_ms: float, opts: argparse.Namespace, redis: Redis, admin_dsn: str,
                       base_env: dict[str, str], *, history: bool = True) -> dict[str, float]:
    await redis.flushdb()
    db_name = f"sqm_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    if not history:  # read by the history triggers (schema.sql: square.history_enabled)
        await admin.execute(f"ALTER DATABASE \"{db_name}\" SET square_mirror.history = 'off'")
    dsn = re.sub(r"/[^/?]*(\?|$)", f"/{db_name}\\1", admin_dsn, count=1) if admin_dsn.count("/") >= 3 else admin_dsn
    try:
        await migrate(dsn)
        config = EmulatorConfig(knobs=Knobs(latency_ms=latency_ms))
        async with run_emulator(config) as emu, aiohttp.ClientSession() as session:
            state = emu.emulator.merchants[emu.merchant_id]
            customers = opts.customers if kind in ("burst", "attributes") else max(opts.customers, 1000)
            state.quiet = True
            ids = [state.create_customer({"given_name": f"Bench{n}"})[0].id for n in range(customers)]
            state.quiet = False
            metrics_port = free_port()
            env = {**base_env, "DATABASE_URL": dsn, "SQUARE_BASE_URL": emu.base_url,
                   "SQUARE_ACCESS_TOKEN": emu.token, "WORKER_METRICS_PORT": str(metrics_port)}
            profile = os.environ.get("BENCH_PROFILE")  # write a cProfile of the worker process there
            proc = await start_process((["-m", "cProfile", "-o", profile] if profile else [])
                                       + ["-m", "square_mirror", "worker"], env)
            try:
                await wait_for_metrics(session, metrics_port, proc)
                calls_before = await scrape_api_calls(session, metrics_port)
                cpu_start = cpu_seconds(proc.pid)
                started = time.perf_counter()
                if kind == "attributes":
                    payloads = await attribute_events(emu, state, ids, opts.updates, dsn)
                    started = time.perf_counter()
                    await enqueue(redis, payloads)
                    total = len(payloads)
                elif kind == "burst":
                    for _round in range(opts.updates):
                        for cid in ids:
                            state.update_customer(cid, {"family_name": f"U{_round}"}, None, clear_null=True)
                    received = now_iso()
                    payloads = [build_event_job(e, received_at=received) for _ts, e in state.events.entries]
                    started = time.perf_counter()
                    await enqueue(redis, payloads)
                    total = len(payloads)
                else:
                    rng = random.Random(1)
                    total = 0
                    per_tick = max(1, int(opts.paced_rate / 100))
                    ticks = int(opts.paced_seconds * 100)
                    for tick in range(ticks):
                        seen = len(state.events.entries)
                        for _ in range(per_tick):
                            state.update_customer(rng.choice(ids), {"family_name": f"T{tick}"}, None,
                                                  clear_null=True)
                        received = now_iso()
                        batch = [build_event_job(e, received_at=received) for _ts, e in state.events.entries[seen:]]
                        await enqueue(redis, batch)
                        total += len(batch)
                        await asyncio.sleep(max(0.0, started + (tick + 1) * 0.01 - time.perf_counter()))
                conn = await asyncpg.connect(dsn)
                try:
                    deadline = time.perf_counter() + 300
                    while time.perf_counter() < deadline:
                        done = await conn.fetchval(
                            "SELECT count(*) FROM square.webhook_events WHERE processed_at IS NOT NULL")
                        if done >= total:
                            break
                        await asyncio.sleep(0.02)
                    elapsed = time.perf_counter() - started
                    lags = [r["lag"] for r in await conn.fetch(
                        "SELECT extract(epoch FROM processed_at - received_at)::float8 AS lag"
                        " FROM square.webhook_events WHERE processed_at IS NOT NULL")]
                    outcomes = dict(await conn.fetch(
                        "SELECT outcome, count(*) FROM square.webhook_events GROUP BY outcome"))
                    stored = dict(await conn.fetch("SELECT id, version FROM square.customers_current"))
                    if kind == "attributes":  # the values must be the emulator's last ones
                        values = {r["customer_id"]: r["version"] for r in await conn.fetch(
                            "SELECT customer_id, version FROM square.customer_custom_attributes")}
                finally:
                    await conn.close()
                calls = await scrape_api_calls(session, metrics_port) - calls_before
                worker_cpu = cpu_seconds(proc.pid) - cpu_start
            finally:
                await stop_process(proc)
            touched = {p_id for p_id in stored}
            wrong = sum(1 for cid in touched if state.customers[cid].version != stored[cid])
            if kind == "attributes":
                wrong += sum(1 for cid in ids if values.get(cid) != opts.updates)
        return {"events": total, "seconds": elapsed, "events_per_s": total / elapsed,
                "p50": percentile(lags, 0.50), "p99": percentile(lags, 0.99), "calls_per_event": calls / total,
                "applied": float(outcomes.get("applied", 0)), "stale": float(outcomes.get("stale", 0)),
                "wrong_rows": float(wrong), "worker_cpu_ms_per_event": 1000 * worker_cpu / total}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()


async def main(opts: argparse.Namespace) -> int:
    redis_server = None
    redis_url = opts.redis_url
    if not redis_url:
        redis_server = EmbeddedRedis()
        redis_url = redis_server.start()
    redis = Redis.from_url(redis_url)
    base_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    base_env.update({"REDIS_URL": redis_url, "PYTHONPATH": ROOT, "LOG_LEVEL": "WARNING",
                     "WORKER_METRICS_PORT": "0", "DATABASE_URL": opts.database_url})
    try:
        events = opts.customers * opts.updates
        noop: dict[str, float] = {}
        for kind, label in (("arq", "stock arq"), ("ours", "our Worker subclass")):
            rates = [await baseline(redis, base_env, events, kind) for _ in range(2)]
            noop[kind] = sum(rates) / len(rates)
            cpu_ms = baseline_cpu_ms[kind]
            print(f"no-op baseline, {label:19} (max_jobs 200, poll_delay 0.05): {noop[kind]:8.0f} jobs/s "
                  f"(mean of {', '.join(f'{n:.0f}' for n in rates)}; {sum(cpu_ms) / len(cpu_ms):.2f} ms CPU per job)")
        print(f"{'scenario':28} {'events':>7} {'events/s':>9} {'ratio':>6} {'vs ours':>7} {'lag p50':>8} "
              f"{'lag p99':>8} {'calls/event':>11} {'applied':>7} {'stale':>6} {'cpu ms/ev':>9}")
        for latency in opts.latencies:
            runs = [("burst", latency), ("attributes", latency)]
            if latency in opts.paced_latencies:
                runs.append(("paced", latency))
            for kind, lat in runs:
                for history in ((True, False) if opts.history_cost and kind == "burst" else (True,)):
                    r = await run_scenario(kind, lat, opts, redis, opts.database_url, base_env, history=history)
                    label = {"burst": f"burst {opts.customers}x{opts.updates} @{lat:g}ms",
                             "attributes": f"attrs {opts.customers}x{opts.updates} @{lat:g}ms",
                             }.get(kind, f"paced {opts.paced_rate}/s @{lat:g}ms") + ("" if history else " no-hist")
                    rate = r["events_per_s"]
                    print(f"{label:28} {r['events']:7.0f} {rate:9.0f} {rate / noop['arq']:6.2f} "
                          f"{rate / noop['ours']:7.2f} "
                          f"{r['p50']:7.3f}s {r['p99']:7.3f}s {r['calls_per_event']:11.4f} {r['applied']:7.0f} "
                          f"{r['stale']:6.0f} {r['worker_cpu_ms_per_event']:8.2f}"
                          + (f"  WRONG ROWS: {r['wrong_rows']:.0f}" if r["wrong_rows"] else ""))
    finally:
        await redis.aclose()
        if redis_server is not None:
            redis_server.stop()
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--latencies", default="0,50", help="emulator latency per request, ms (comma-separated)")
    parser.add_argument("--paced-latencies", default="50", help="latencies that also get the paced scenario")
    parser.add_argument("--paced-rate", type=int, default=500)
    parser.add_argument("--history-cost", action="store_true",
                        help="run each burst also with history recording off (the ratio shows history's cost)")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL")
                        or "postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="", help="default: a private redis-server on a free port")
    parser.add_argument("--noop-worker", choices=("arq", "ours"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.latencies = [float(x) for x in str(opts.latencies).split(",") if x]
    opts.paced_latencies = [float(x) for x in str(opts.paced_latencies).split(",") if x]
    return opts


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    if options.noop_worker:
        sys.exit(noop_worker(options.noop_worker))
    sys.exit(asyncio.run(main(options)))
