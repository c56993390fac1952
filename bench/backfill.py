"""Backfill benchmark: N customers from the emulator into an empty mirror, at several per-request latencies.

    PYTHONPATH=. .venv/bin/python bench/backfill.py [--customers 100000] [--latency-ms 0 100] [--concurrency 8]
                                                     [--baseline] [--history-cost]
                                                     [--custom-attributes [--attribute-concurrency 64]]
                                                     [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

The emulator runs as its own process (seeded once, latency changed through its admin API between runs) and
`square-mirror backfill --full` runs as a separate process per case, so the peak RSS printed is the backfill
process's alone (``wait4`` rusage). Each case gets a fresh, migrated database. Printed per case: customers/s
(customers in the mirror / wall time of the backfill process, start-up included), Square requests made,
peak RSS, and the run's status and counts from ``square.sync_runs``. ``--baseline`` adds the same backfill
with concurrency 1 (sequential cursor paging, what existing connectors do) at the first latency, and prints
the ratio against it.

``--custom-attributes``: the emulator holds two sellers with the same number of customers, one of them with
custom attributes (8 definitions; 30% of its customers hold values for 1-5 of them: the emulator's seeding) and
one without. Per latency, the backfill of the seller without custom attributes is the baseline of the same run;
printed: customers/s with and without, their ratio, and the custom-attribute requests by endpoint against the
goal ``requests <= 1.05 x (customers with at least one value) + searches + definition pages``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from square_mirror.db import migrate  # noqa: E402


def with_database(dsn: str, name: str) -> str:
    return urlsplit(dsn)._replace(path="/" + name).geturl()


class BackendCpu:
    """CPU seconds of the Postgres backends serving one database, polled while they live (they exit with the run)."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn, self.name = dsn, name
        self.seen: dict[int, float] = {}
        self._stop = asyncio.Event()

    async def poll(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                pids = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.name
                )
                for row in pids:
                    with contextlib.suppress(psutil.Error):
                        self.seen[row["pid"]] = sum(psutil.Process(row["pid"]).cpu_times()[:2])
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    def stop(self) -> float:
        self._stop.set()
        return sum(self.seen.values())


ATTRIBUTE_SELLERS = {"MBENCHATTRS1": "EAAAbenchWithAttributes000000", "MBENCHPLAIN1": "EAAAbenchWithoutAttributes00"}
SEEDED_ATTRIBUTES = {"definitions": 8, "share": 0.3, "min": 1, "max": 5}


def start_emulator(customers: int, seed: int, *, sellers: dict[str, str] | None = None
                   ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    seller_args = [a for mid, token in (sellers or {}).items() for a in ("--seller", f"{mid}:{token}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--customers", str(customers), "--seed", str(seed),
         *seller_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    info = json.loads(line)
    info["pid"] = proc.pid
    return proc, info


async def seed_seller(base_url: str, merchant_id: str, customers: int, seed: int,
                      custom_attributes: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"merchant_id": merchant_id, "customers": customers, "seed": seed}
    if custom_attributes:
        body["custom_attributes"] = custom_attributes
    async with aiohttp.ClientSession() as session, session.post(f"{base_url}/_emulator/seed", json=body) as resp:
        resp.raise_for_status()
        result: dict[str, Any] = await resp.json()
        return result


async def set_latency(base_url: str, latency_ms: float) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{base_url}/_emulator/faults", json={"latency_ms": latency_ms}) as resp,
    ):
        resp.raise_for_status()


async def fresh_database(admin_dsn: str, *, history: bool = True) -> tuple[str, str]:
    name = f"bench_backfill_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        if not history:  # the history triggers read this setting (schema.sql: square.history_enabled)
            await conn.execute(f"ALTER DATABASE \"{name}\" SET square_mirror.history = 'off'")
    finally:
        await conn.close()
    dsn = with_database(admin_dsn, name)
    await migrate(dsn)
    return name, dsn


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_backfill(dsn: str, emulator: dict[str, Any], concurrency: int, seller: dict[str, str] | None = None,
                 attribute_concurrency: int | None = None) -> tuple[float, int, int, str]:
    seller = seller or emulator["sellers"][0]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SQUARE_TOKENS_FILE")}
    env.update(
        PYTHONPATH=str(ROOT),
        DATABASE_URL=dsn,
        SQUARE_BASE_URL=emulator["emulator"],
        SQUARE_ACCESS_TOKEN=seller["token"],
        SQUARE_MERCHANT_ID=seller["merchant_id"],
        BACKFILL_CONCURRENCY=str(concurrency),
        SQUARE_MAX_REQUESTS_PER_SECOND="0",  # no client-side rate limit: the emulator's speed is measured
        LOG_LEVEL="WARNING",
    )
    if attribute_concurrency:
        env["BACKFILL_CUSTOM_ATTRIBUTE_CONCURRENCY"] = str(attribute_concurrency)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "square_mirror",
            "backfill",
            "--merchant",
            seller["merchant_id"],
            "--full",
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    output = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss * 1024, proc.returncode, output + f"\ncpu={usage.ru_utime + usage.ru_stime}"


async def case(
    admin_dsn: str, emulator: dict[str, Any], latency_ms: float, concurrency: int, *, history: bool = True,
    seller: dict[str, str] | None = None, attribute_concurrency: int | None = None,
) -> dict[str, Any]:
    await set_latency(emulator["emulator"], latency_ms)
    name, dsn = await fresh_database(admin_dsn, history=history)
    try:
        emu_proc = psutil.Process(emulator["pid"])
        emu_cpu = sum(emu_proc.cpu_times()[:2])
        machine = psutil.cpu_times()
        backends = BackendCpu(dsn, name)
        poller = asyncio.create_task(backends.poll())
        elapsed, rss, code, output = await asyncio.to_thread(run_backfill, dsn, emulator, concurrency, seller,
                                                             attribute_concurrency)
        pg_cpu = backends.stop()
        await poller
        emu_cpu = sum(emu_proc.cpu_times()[:2]) - emu_cpu
        after = psutil.cpu_times()
        machine_busy = (after.user + after.system) - (machine.user + machine.system)
        backfill_cpu = float(output.rsplit("cpu=", 1)[1])
        conn = await asyncpg.connect(dsn)
        try:
            mirrored = await conn.fetchval("SELECT count(*) FROM square.customers WHERE deleted_at IS NULL")
            holders = await conn.fetchval(
                "SELECT count(DISTINCT customer_id) FROM square.customer_custom_attributes WHERE deleted_at IS NULL")
            values = await conn.fetchval(
                "SELECT count(*) FROM square.customer_custom_attributes WHERE deleted_at IS NULL")
            row = await conn.fetchrow(
                "SELECT status, counts, extract(epoch FROM finished_at - started_at) AS secs"
                " FROM square.sync_runs ORDER BY run_id DESC LIMIT 1"
            )
        finally:
            await conn.close()
    finally:
        await drop_database(admin_dsn, name)
    counts = json.loads(row["counts"]) if row and isinstance(row["counts"], str) else (row["counts"] if row else {})
    return {
        "merchant_id": (seller or emulator["sellers"][0])["merchant_id"],
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "history": history,
        "exit": code,
        "status": row["status"] if row else None,
        "customers": mirrored,
        "seconds": round(elapsed, 2),
        "customers_per_s": round(mirrored / elapsed),
        "run_seconds": round(float(row["secs"]), 2) if row else None,
        "square_requests": counts.get("square_requests"),
        "pages": counts.get("pages"),
        "write_statements": counts.get("write_statements"),
        "fetch_s": round(counts.get("fetch_ms", 0) / 1000, 1),
        "write_s": round(counts.get("write_ms", 0) / 1000, 1),
        "peak_rss_mb": round(rss / 2**20, 1),
        "custom_attributes": {
            "customers_with_values": holders,
            "values": values,
            "definition_pages": counts.get("custom_attribute_definition_pages", 0),
            "searches": counts.get("custom_attribute_searches", 0),
            "reads": counts.get("custom_attribute_reads", 0),
            "hidden_reads": counts.get("custom_attribute_hidden_reads", 0),
            "rechecks": counts.get("custom_attribute_rechecks", 0),
        },
        "cpu_seconds": {
            "backfill": round(backfill_cpu, 1),
            "emulator": round(emu_cpu, 1),
            "postgres": round(pg_cpu, 1),
            "machine_busy": round(machine_busy, 1),
            "machine_capacity": round(elapsed * psutil.cpu_count(), 1),
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 100.0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline", action="store_true", help="also run concurrency 1 at the first latency")
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--history-cost", action="store_true",
                        help="also run each latency with history recording off and print the on/off ratio")
    parser.add_argument("--custom-attributes", action="store_true",
                        help="backfill a seller with custom attributes against one without, at each latency")
    parser.add_argument("--attribute-concurrency", type=int, default=None,
                        help="BACKFILL_CUSTOM_ATTRIBUTE_CONCURRENCY (default: the setting's default)")
    args = parser.parse_args()
    if args.custom_attributes:
        await custom_attributes_bench(args)
        return

    t0 = time.perf_counter()
    proc, emulator = start_emulator(args.customers, args.seed)
    print(
        f"emulator with {args.customers} customers ready in {time.perf_counter() - t0:.1f}s at {emulator['emulator']}",
        flush=True,
    )
    results = []
    try:
        for latency in args.latency_ms:
            result = await case(args.dsn, emulator, latency, args.concurrency)
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.history_cost:
                off = await case(args.dsn, emulator, latency, args.concurrency, history=False)
                print(json.dumps(off), flush=True)
                ratio = result["customers_per_s"] / max(off["customers_per_s"], 1)
                print(f"history cost at {latency:.0f} ms: on {result['customers_per_s']:,}/s, off "
                      f"{off['customers_per_s']:,}/s, ratio {ratio:.2f}", flush=True)
        if args.baseline:
            base = await case(args.dsn, emulator, args.latency_ms[0], 1)
            print(json.dumps({"baseline_sequential": base}), flush=True)
            print(
                f"concurrent/sequential at {args.latency_ms[0]} ms: "
                f"{results[0]['customers_per_s'] / max(base['customers_per_s'], 1):.1f}x",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("\n| latency | concurrency | customers/s | Square requests | peak RSS | status |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['latency_ms']:.0f} ms | {r['concurrency']} | {r['customers_per_s']:,} | {r['square_requests']} | "
            f"{r['peak_rss_mb']} MB | {r['status']} |"
        )


async def custom_attributes_bench(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    proc, emulator = start_emulator(0, args.seed, sellers=ATTRIBUTE_SELLERS)
    try:
        sellers = {s["merchant_id"]: s for s in emulator["sellers"]}
        with_attrs, without = (sellers[mid] for mid in ATTRIBUTE_SELLERS)
        seeded = await seed_seller(emulator["emulator"], with_attrs["merchant_id"], args.customers, args.seed,
                                   SEEDED_ATTRIBUTES)
        await seed_seller(emulator["emulator"], without["merchant_id"], args.customers, args.seed, None)
        print(f"emulator with 2 x {args.customers} customers ({seeded['custom_attributes']['values']} custom "
              f"attribute values) ready in {time.perf_counter() - t0:.1f}s at {emulator['emulator']}", flush=True)
        rows = []
        for latency in args.latency_ms:
            base = await case(args.dsn, emulator, latency, args.concurrency, seller=without,
                              attribute_concurrency=args.attribute_concurrency)
            print(json.dumps({"without_custom_attributes": base}), flush=True)
            result = await case(args.dsn, emulator, latency, args.concurrency, seller=with_attrs,
                                attribute_concurrency=args.attribute_concurrency)
            print(json.dumps({"with_custom_attributes": result}), flush=True)
            ca = result["custom_attributes"]
            requests = ca["definition_pages"] + ca["searches"] + ca["reads"]
            goal = 1.05 * ca["customers_with_values"] + ca["searches"] + ca["definition_pages"]
            ratio = result["customers_per_s"] / max(base["customers_per_s"], 1)
            print(f"at {latency:.0f} ms: with {result['customers_per_s']:,}/s, without {base['customers_per_s']:,}/s, "
                  f"ratio {ratio:.2f} (goal >= 0.5 at 100 ms); custom-attribute requests {requests:,} <= goal "
                  f"{goal:,.0f}: {requests <= goal}", flush=True)
            rows.append((latency, base, result, ratio, requests, goal))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("\n| latency | customers/s without / with (ratio) | customers with values"
          " | ListCustomerCustomAttributeDefinitions | SearchCustomers (custom_attribute)"
          " | ListCustomerCustomAttributes | requests / goal | status |")
    print("|---|---|---|---|---|---|---|---|")
    for latency, base, r, ratio, requests, goal in rows:
        ca = r["custom_attributes"]
        print(f"| {latency:.0f} ms | {base['customers_per_s']:,} / {r['customers_per_s']:,} ({ratio:.2f}) | "
              f"{ca['customers_with_values']:,} | {ca['definition_pages']} | {ca['searches']:,} | {ca['reads']:,} | "
              f"{requests:,} / {goal:,.0f} | {base['status']}, {r['status']} |")


if __name__ == "__main__":
    asyncio.run(main())
