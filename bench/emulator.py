"""Benchmark the emulator: seeding time/RSS, RetrieveCustomer requests/s, ListCustomers pages/s.

Usage: PYTHONPATH=. python bench/emulator.py [--customers 200000] [--seconds 5] [--concurrency 32]

The emulator runs as a subprocess (``python -m emulator``) so its CPU and RSS are measured on their
own; the client is a concurrent aiohttp client in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size (or its peak with field="VmHWM") of the emulator process, in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


async def drive_search(base: str, token: str, seconds: float, concurrency: int, body: dict[str, object]) -> int:
    """SearchCustomers requests/s for one query, each worker following cursors to the end and restarting."""
    done = 0
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {token}"}) as s:

        async def worker() -> None:
            nonlocal done
            cursor = None
            while time.perf_counter() < deadline:
                payload = {**body, "cursor": cursor} if cursor else body
                async with s.post(base + "/v2/customers/search", json=payload) as r:
                    page = await r.json()
                    assert r.status == 200, page
                cursor = page.get("cursor")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def drive(url_fn: object, base: str, token: str, seconds: float, concurrency: int) -> int:
    done = 0
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {token}"}) as s:

        async def worker(n: int) -> None:
            nonlocal done
            i = n
            while time.perf_counter() < deadline:
                async with s.get(base + url_fn(i)) as r:  # type: ignore[operator]
                    await r.read()
                    assert r.status == 200, r.status
                done += 1
                i += concurrency

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done


async def drive_list(base: str, token: str, seconds: float, concurrency: int) -> int:
    """Each worker walks the directory page by page with cursors, in one of the four sort orders."""
    done = 0
    deadline = time.perf_counter() + seconds
    sorts = ["", "&sort_field=CREATED_AT", "&sort_order=DESC", "&sort_field=CREATED_AT&sort_order=DESC"]
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {token}"}) as s:

        async def worker(n: int) -> None:
            nonlocal done
            cursor = None
            while time.perf_counter() < deadline:
                url = f"{base}/v2/customers?limit=100{sorts[n % 4]}" + (f"&cursor={cursor}" if cursor else "")
                async with s.get(url) as r:
                    body = await r.json()
                    assert r.status == 200 and len(body["customers"]) == 100, r.status
                cursor = body.get("cursor")
                done += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done


def start_emulator() -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "emulator", "--port", "0", "--seed", "1"],
                            stdout=subprocess.PIPE, env=env, text=True)


async def main_async(args: argparse.Namespace, proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        base, token = info["emulator"], info["sellers"][0]["token"]
        rss0 = rss_mb(proc.pid)
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            async with s.post(base + "/_emulator/seed", json={"customers": args.customers}) as r:
                assert r.status == 200, await r.text()
            seed_s = time.perf_counter() - t0
            rss = rss_mb(proc.pid)
            print(f"seed: {args.customers} customers in {seed_s:.2f} s, RSS {rss:.0f} MB (idle {rss0:.0f} MB)")
            ids: list[str] = []
            cursor = None
            while len(ids) < 5000:
                q = f"?limit=100&cursor={cursor}" if cursor else "?limit=100"
                async with s.get(base + "/v2/customers" + q, headers={"Authorization": f"Bearer {token}"}) as r:
                    body = await r.json()
                ids += [c["id"] for c in body["customers"]]
                cursor = body.get("cursor")
                if not cursor:
                    break
        n = await drive(lambda i: f"/v2/customers/{ids[i % len(ids)]}", base, token, args.seconds, args.concurrency)
        print(f"RetrieveCustomer: {n / args.seconds:.0f} requests/s (concurrency {args.concurrency})")
        pages = await drive_list(base, token, args.seconds, args.concurrency)
        print(f"ListCustomers (100/page, following cursors): {pages / args.seconds:.0f} pages/s")
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
        for label, query in (("fuzzy email 'james gmail'", {"filter": {"email_address": {"fuzzy": "james gmail"}}}),
                             ("updated_at last 24 h, CREATED_AT sort", {"filter": {"updated_at": {"start_at": since}},
                                                                        "sort": {"field": "CREATED_AT"}})):
            n = await drive_search(base, token, args.seconds, 8, {"limit": 100, "query": query})
            print(f"SearchCustomers {label}: {n / args.seconds:.0f} requests/s")
        print(f"final RSS {rss_mb(proc.pid):.0f} MB, peak {rss_mb(proc.pid, 'VmHWM'):.0f} MB")
    finally:
        proc.terminate()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    proc = start_emulator()
    try:
        asyncio.run(main_async(p.parse_args(), proc))
    finally:
        proc.wait(10)


if __name__ == "__main__":
    main()
