"""A thousand sellers: event lag, request budgets and lane staleness with power-law directory sizes (issue 20).

Usage: PYTHONPATH=. .venv/bin/python bench/sellers.py [--sellers 1000] [--scale 10] [--duration 600]
           [--rate 50] [--latency-ms 50] [--budget-rps 50] [--scheduler cron|budget] [--lane-share 0.3]
           [--split | --compare] [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

What runs where (first version):
- one emulator process (``python -m emulator``) holding every seller (``--seller M:TOKEN``), seeded through its admin
  API with power-law directory sizes: 1 seller of 100,000 customers, 1% of the sellers with 10,000, 10% with 1,000,
  the rest with 100, each size divided by ``--scale`` (printed); 3-8 groups and 3-8 segments each;
- the mirror's own processes: ``square-mirror webhooks`` (the receiver the emulator delivers its webhooks to) and two
  ``square-mirror worker`` processes, either both on every queue (one pool) or, with ``--split``, one on
  ``--queues events`` and one on ``--queues lanes,backfill``; a private Redis and a fresh database on the local
  Postgres, both removed at the end;
- before the measured window every seller is backfilled (``square-mirror backfill --all``) at 0 ms latency; then the
  latency is set to ``--latency-ms`` and the emulator rate-limits each seller at ``--budget-rps`` (its token bucket:
  a 429 is a request over the seller's budget), which is also the mirror's ``SQUARE_MAX_REQUESTS_PER_SECOND``;
  the workers run ``--scheduler`` (``LANE_SCHEDULER``) and, if given, ``--lane-share`` (``LANE_BUDGET_SHARE``);
- webhook traffic: Dashboard edits (admin ``PATCH /customers/{id}``) at ``--rate`` edits/s in aggregate, each
  seller picked with a probability proportional to its directory size, with a burst of ``--burst-factor`` x the
  rate for ``--burst-seconds`` every ``--burst-every`` seconds; each edit makes the emulator deliver a real
  ``customer.updated`` webhook to the receiver;
- at ``--backfill-at`` of the window the largest seller's full backfill is queued (a ``backfill_job`` on the
  backfill queue, run by the workers).

Time is not scaled: the lanes' targets are the production ones (incremental 60 s; segments, groups, events,
custom attributes 300 s; sweep 1 day), so a window shorter than twice a target cannot show a bound beyond it; the
output says which lanes the window can judge. Figures printed per size class: event-to-row lag p50/p99
(``square.webhook_events`` received_at -> processed_at) over the whole window and while the big backfill ran;
Square requests per seller per hour against the budget, counted by the emulator (admin ``/_emulator/requests``,
cleared when the window starts, so the pre-window backfill is left out): mean and max over the class's sellers, the
busiest whole second of any of them against ``--budget-rps`` (the bucket also allows a burst of 100), and the 429s
the emulator answered, which are the over-budget check: the goal "no seller over its budget" is no 429 for any
seller, and the sellers that got one are listed. The emulator counts what arrived, every path included (lanes,
backfills, the event path's reads), whatever the mirror believes it sent; the mirror's own figures (its lane and
backfill runs' counts in ``square.sync_runs``, the workers' ``square_mirror_square_requests_total``) are printed
beside them. Also: the sellers the mirror reported unable to afford their lanes (the workers' ``lanes_unaffordable``
log lines, per class, and those still so at the end in ``square.lane_budgets``); each lane's staleness bound
(``square.sync_freshness``), max per class; Redis ``INFO memory`` and ``pg_database_size``; and the goals'
pass/fail. ``--compare`` runs the same benchmark without and then with the split and prints the ratio of the event
lag p99s (the split's baseline is the one pool).
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
import json
import random
import re
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from arq.connections import create_pool
from redis.asyncio import Redis

from square_mirror.constants import BACKFILL_JOB, BACKFILL_QUEUE, LANE_TARGET_SECONDS, backfill_job_id
from square_mirror.db import migrate
from square_mirror.devstack import Stack, cli_command, emulator_admin, wait_for
from square_mirror.embedded import EmbeddedRedis, free_port
from square_mirror.queue import deserialize_job, redis_settings, serialize_job

CLASSES = ("xl", "l", "m", "s")  # 100,000 / 10,000 / 1,000 / 100 customers before scaling
BASE_SIZES = {"xl": 100_000, "l": 10_000, "m": 1_000, "s": 100}


def plan_sellers(n: int, scale: float, seed: int) -> list[dict[str, Any]]:
    """The sellers, largest first: 1 xl, 1% l, 10% m, the rest s (at least one of each when n >= 4)."""
    counts = {"xl": 1, "l": max(1, n // 100), "m": max(1, n // 10)}
    counts["s"] = max(0, n - sum(counts.values()))
    rng = random.Random(seed)
    sellers = []
    for cls in CLASSES:
        for i in range(counts[cls]):
            mid = f"MB{cls.upper()}{i:05d}"
            sellers.append({"merchant_id": mid, "token": f"EAAAbench{mid}{secrets.token_hex(8)}", "class": cls,
                            "customers": max(5, round(BASE_SIZES[cls] / scale)),
                            "groups": rng.randint(3, 8), "segments": rng.randint(3, 8)})
    return sellers


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tcp_up(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """square_mirror_square_requests_total of one worker: {"total": n, "429": n}."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return {"total": float("nan"), "429": float("nan")}
    out = {"total": 0.0, "429": 0.0}
    for m in re.finditer(r"^square_mirror_square_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        out["total"] += float(m.group(2))
        if 'status="429"' in m.group(1):
            out["429"] += float(m.group(2))
    return out


async def traffic(session: aiohttp.ClientSession, base: str, sellers: list[dict[str, Any]],
                  customers: dict[str, list[str]], opts: argparse.Namespace, stop: asyncio.Event) -> int:
    """Dashboard edits at the aggregate rate with periodic bursts; returns how many were made."""
    rng = random.Random(opts.seed)
    weights = [len(customers[s["merchant_id"]]) for s in sellers]
    started = time.monotonic()
    sent = 0
    pending: set[asyncio.Task[Any]] = set()

    async def edit(mid: str, cid: str, n: int) -> None:
        await emulator_admin(session, base, "PATCH", f"/customers/{cid}", {"merchant_id": mid, "note": f"bench {n}"})

    while not stop.is_set():
        elapsed = time.monotonic() - started
        in_burst = opts.burst_every > 0 and (elapsed % opts.burst_every) < opts.burst_seconds
        rate = opts.rate * (opts.burst_factor if in_burst else 1.0)
        seller = rng.choices(sellers, weights)[0]
        cid = rng.choice(customers[seller["merchant_id"]])
        sent += 1
        task = asyncio.create_task(edit(seller["merchant_id"], cid, sent))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(1.0 / rate)
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return sent


async def run_once(opts: argparse.Namespace, split: bool) -> dict[str, Any]:
    sellers = plan_sellers(opts.sellers, opts.scale, opts.seed)
    by_mid = {s["merchant_id"]: s for s in sellers}
    big = sellers[0]["merchant_id"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-sellers-"))
    stack = Stack(workdir)
    redis_server = EmbeddedRedis()
    stack.embedded.append(redis_server)
    redis_url = redis_server.start()
    db_name = f"bench_sellers_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(opts.database_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    dsn = urlsplit(opts.database_url)._replace(path="/" + db_name).geturl()
    result: dict[str, Any] = {"split": split}
    try:
        await migrate(dsn)
        emu_port, hook_port = free_port(), free_port()
        hook_url = f"http://127.0.0.1:{hook_port}/square/webhooks"
        signature_key = secrets.token_urlsafe(24)
        seller_args = [a for s in sellers for a in ("--seller", f"{s['merchant_id']}:{s['token']}")]
        t0 = time.monotonic()
        emulator = stack.start("emulator", cli_command(
            "emulator", "--port", str(emu_port), "--seed", str(opts.seed), "--customers", "0",
            "--webhook-url", hook_url, f"--signature-key={signature_key}", *seller_args), dict(os.environ))
        await wait_for(lambda: tcp_up(emu_port), "the emulator", timeout=120, proc=emulator)
        base = f"http://127.0.0.1:{emu_port}"
        customers: dict[str, list[str]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            sem = asyncio.Semaphore(8)

            async def seed(s: dict[str, Any]) -> None:
                async with sem:
                    await emulator_admin(session, base, "POST", "/seed", {
                        "merchant_id": s["merchant_id"], "customers": s["customers"], "groups": s["groups"],
                        "segments": s["segments"], "seed": opts.seed})
                    state = await emulator_admin(session, base, "GET", f"/state?merchant_id={s['merchant_id']}")
                    customers[s["merchant_id"]] = sorted(state["customers"])

            await asyncio.gather(*(seed(s) for s in sellers))
            total = sum(len(v) for v in customers.values())
            print(f"[{'split' if split else 'one pool'}] emulator: {len(sellers)} sellers, {total:,} customers "
                  f"seeded in {time.monotonic() - t0:.0f} s", flush=True)

            tokens_file = workdir / "tokens.json"
            tokens_file.write_text(json.dumps({s["merchant_id"]: s["token"] for s in sellers}))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SQUARE_", "WORKER_", "DATABASE_",
                                                                             "REDIS_", "LANE_"))}
            env.update({
                "PYTHONPATH": os.path.dirname(_HERE), "DATABASE_URL": dsn, "REDIS_URL": redis_url,
                "SQUARE_BASE_URL": base, "SQUARE_TOKENS_FILE": str(tokens_file),
                "SQUARE_WEBHOOK_SIGNATURE_KEY": signature_key, "SQUARE_WEBHOOK_NOTIFICATION_URL": hook_url,
                "SQUARE_MAX_REQUESTS_PER_SECOND": str(opts.budget_rps), "LANE_SCHEDULER": opts.scheduler,
                "LOG_LEVEL": "WARNING",
            })
            if opts.db_pool_size:
                env["WORKER_DB_POOL_SIZE"] = str(opts.db_pool_size)
            if opts.lane_share is not None:
                env["LANE_BUDGET_SHARE"] = str(opts.lane_share)
            t0 = time.monotonic()
            pre = stack.start("backfill-all", cli_command("backfill", "--all", "--no-progress"),
                              {**env, "SQUARE_MAX_REQUESTS_PER_SECOND": "0"})
            code = await asyncio.to_thread(pre.wait)
            if code != 0:
                tail = (workdir / "backfill-all.log").read_text()[-2000:]
                raise RuntimeError(f"backfill --all exited with {code}: {tail}")
            print(f"  backfill of every seller at 0 ms latency: {time.monotonic() - t0:.0f} s", flush=True)

            await emulator_admin(session, base, "PUT", "/faults", {
                "latency_ms": opts.latency_ms, "rate_limit_rps": opts.budget_rps,
                "rate_limit_burst": 100})  # the mirror's SQUARE_REQUEST_BURST default
            receiver = stack.start("receiver", cli_command("webhooks", "--host", "127.0.0.1", "--port",
                                                           str(hook_port)), env)
            await wait_for(lambda: tcp_up(hook_port), "the receiver", proc=receiver)
            queue_sets = [["events"], ["lanes", "backfill"]] if split else [[], []]
            metric_ports = []
            for n, queues in enumerate(queue_sets):
                port = free_port()
                args = ["worker", *(["--queues", ",".join(queues)] if queues else [])]
                proc = stack.start(f"worker{n}", cli_command(*args), {**env, "WORKER_METRICS_PORT": str(port)})
                await wait_for(lambda p=port: tcp_up(p), f"worker {n}", timeout=60, proc=proc)  # type: ignore[misc]
                metric_ports.append(port)

            # The window starts here: the emulator's counts from now on are the window's (the set-up is left out).
            await emulator_admin(session, base, "DELETE", "/requests")
            window_start = await admin.fetchval("SELECT now()")
            stop = asyncio.Event()
            t_start = time.monotonic()
            driver = asyncio.create_task(traffic(session, base, sellers, customers, opts, stop))
            await asyncio.sleep(opts.duration * opts.backfill_at)
            arq = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                    job_deserializer=deserialize_job)
            await arq.enqueue_job(BACKFILL_JOB, big, True, _job_id=backfill_job_id(big) + ":bench",
                                  _queue_name=BACKFILL_QUEUE)
            await arq.aclose()
            print(f"  {time.monotonic() - t_start:.0f} s: the largest seller's full backfill queued", flush=True)
            while time.monotonic() - t_start < opts.duration:
                await asyncio.sleep(5)
                if opts.progress:
                    lag = await db_value(dsn, "SELECT count(*) FROM square.webhook_events WHERE processed_at IS NULL")
                    print(f"  {time.monotonic() - t_start:.0f} s: {lag} events unprocessed", flush=True)
            stop.set()
            sent = await driver
            await asyncio.sleep(5)  # the last deliveries and their processing
            window_end = await admin.fetchval("SELECT now()")
            counted = await emulator_admin(session, base, "GET", "/requests")
            metrics = [await scrape(session, p) for p in metric_ports]
        result.update(await measure(dsn, db_name, by_mid, big, window_start, window_end, opts))
        unaffordable = lane_unaffordable([workdir / f"worker{n}.log" for n in range(len(queue_sets))])
        result.update(emulator_counts(counted, by_mid, unaffordable))
        result["edits"] = sent
        result["square_requests_total"] = sum(m["total"] for m in metrics)
        result["square_429"] = sum(m["429"] for m in metrics)
        r = Redis.from_url(redis_url)
        info = await r.info("memory")
        await r.aclose()
        result["redis_used_mb"] = round(info["used_memory"] / 2**20, 1)
        result["redis_peak_mb"] = round(info["used_memory_peak"] / 2**20, 1)
        return result
    finally:
        if opts.keep_logs:
            import shutil
            shutil.copytree(workdir, f"/tmp/bench-sellers-logs-{'split' if split else 'pool'}", dirs_exist_ok=True)
        stack.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()


def lane_unaffordable(logs: list[Path]) -> list[tuple[str, str]]:
    """The sellers the workers logged as unable to afford their lanes during the run, one (merchant ID, why) each.

    The log lines are JSON with the event after the fields, so each line is parsed, not matched. Two shapes: the
    budget scheduler's ``lanes_unaffordable`` (per seller, logged when it becomes so: ``need_rps`` against
    ``share_rps`` and the lanes whose pass outlasts their target, ``too_slow``; the last report of a seller wins) and
    the first scheduler's ``lane_unaffordable`` (per seller and ``lane``). A seller reported once is listed even if it
    could afford its lanes again later (``lanes_affordable_again``): ``square.lane_budgets`` tells the end state.
    """
    why: dict[str, str] = {}
    lanes: dict[str, set[str]] = {}
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if "_unaffordable" not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            mid = str(entry.get("merchant_id"))
            if entry.get("event") == "lanes_unaffordable":
                slow = entry.get("too_slow") or []
                why[mid] = (f"needs {entry.get('need_rps')} of {entry.get('share_rps')} rps"
                            + (f", too slow: {'+'.join(map(str, slow))}" if slow else ""))
            elif entry.get("event") == "lane_unaffordable":
                lanes.setdefault(mid, set()).add(str(entry.get("lane")))
    for mid, names in lanes.items():
        why.setdefault(mid, "+".join(sorted(names)))
    return sorted(why.items())


def first_ten(items: list[str]) -> str:
    return ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")


def emulator_counts(counted: dict[str, Any], by_mid: dict[str, dict[str, Any]],
                    unaffordable: list[tuple[str, str]]) -> dict[str, Any]:
    """Per size class, from the emulator's per-seller counts of the window (admin ``GET /_emulator/requests``)."""
    per_key: dict[str, dict[str, Any]] = counted["merchants"]
    hours = max(float(counted["seconds"]), 1.0) / 3600
    empty = {"total": 0, "429": 0, "max_per_second": 0, "by_operation": {}}
    classes: dict[str, dict[str, Any]] = {}
    for cls in CLASSES:
        mids = sorted(m for m, s in by_mid.items() if s["class"] == cls)
        if not mids:
            continue
        rows = {m: per_key.get(m, empty) for m in mids}
        per_h = {m: c["total"] / hours for m, c in rows.items()}
        peak = max(mids, key=lambda m: rows[m]["max_per_second"])
        operations: dict[str, int] = {}
        for c in rows.values():
            for op, n in c["by_operation"].items():
                operations[op] = operations.get(op, 0) + n
        limited = sorted((m for m in mids if rows[m]["429"]), key=lambda m: (-rows[m]["429"], m))
        classes[cls] = {
            "sellers": len(mids), "requests": sum(c["total"] for c in rows.values()),
            "per_h_mean": sum(per_h.values()) / len(mids), "per_h_max": max(per_h.values()),
            "per_h_max_seller": max(mids, key=lambda m: per_h[m]),
            "max_per_second": rows[peak]["max_per_second"], "max_per_second_seller": peak,
            "429": sum(c["429"] for c in rows.values()), "sellers_429": [f"{m} ({rows[m]['429']})" for m in limited],
            "operations": sorted(operations.items(), key=lambda kv: -kv[1]),
            "unaffordable": [f"{m} ({why})" for m, why in unaffordable if m in rows],
        }
    others = {k: v["total"] for k, v in per_key.items() if k not in by_mid}
    return {"emulator": {"seconds": counted["seconds"], "classes": classes, "others": others,
                         "total": sum(v["total"] for v in per_key.values())},
            "unaffordable": unaffordable}


async def db_value(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def budget_line(b: Any) -> str:
    slow = f", too slow: {'+'.join(b['too_slow_lanes'])}" if b["too_slow_lanes"] else ""
    return f"{b['merchant_id']} (needs {b['need_rps']} of {b['share_rps']} rps{slow})"


async def measure(dsn: str, db_name: str, by_mid: dict[str, dict[str, Any]], big: str, start: Any, end: Any,
                  opts: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetch(
            "SELECT merchant_id, received_at, extract(epoch FROM processed_at - received_at)::float8 AS lag"
            " FROM square.webhook_events WHERE received_at >= $1 AND source = 'webhook'", start)
        bf = await conn.fetchrow(
            "SELECT status, started_at, finished_at, counts FROM square.sync_runs"
            " WHERE merchant_id = $1 AND kind = 'backfill' AND started_at >= $2 ORDER BY run_id DESC LIMIT 1",
            big, start)
        runs = await conn.fetch(
            "SELECT merchant_id, kind, status, counts FROM square.sync_runs WHERE started_at >= $1", start)
        fresh = await conn.fetch("SELECT merchant_id, lane, staleness_seconds, target_seconds"
                                 " FROM square.sync_freshness")
        pg_size = await conn.fetchval("SELECT pg_database_size($1)", db_name)
        budgets = await conn.fetch("SELECT merchant_id, need_rps, share_rps, too_slow_lanes FROM square.lane_budgets"
                                   " WHERE NOT affordable ORDER BY merchant_id")
    finally:
        await conn.close()
    window_h = (end - start).total_seconds() / 3600
    bf_start = bf["started_at"] if bf else None
    bf_end = (bf["finished_at"] or end) if bf else None
    out: dict[str, Any] = {"window_s": round((end - start).total_seconds()), "pg_mb": round(pg_size / 2**20, 1),
                           "big_backfill": None, "classes": {},
                           "unaffordable_at_end": [budget_line(b) for b in budgets]}
    if bf:
        counts = json.loads(bf["counts"]) if isinstance(bf["counts"], str) else bf["counts"]
        out["big_backfill"] = {"status": bf["status"], "seconds": round((bf_end - bf_start).total_seconds(), 1),
                               "finished": bf["finished_at"] is not None,
                               "requests": counts.get("square_requests")}
    requests: dict[str, float] = {}
    for r in runs:
        counts = json.loads(r["counts"]) if isinstance(r["counts"], str) else r["counts"]
        n = counts.get("requests", counts.get("square_requests", counts.get("pages", 0))) or 0
        requests[r["merchant_id"]] = requests.get(r["merchant_id"], 0) + float(n)
    out["run_requests_total"] = sum(requests.values())
    budget_h = opts.budget_rps * 3600
    for cls in CLASSES:
        mids = [m for m, s in by_mid.items() if s["class"] == cls]
        if not mids:
            continue
        ms = set(mids)
        lags = [e["lag"] for e in events if e["merchant_id"] in ms and e["lag"] is not None]
        unprocessed = sum(1 for e in events if e["merchant_id"] in ms and e["lag"] is None)
        during = [e["lag"] for e in events if e["merchant_id"] in ms and e["lag"] is not None and bf_start
                  and bf_start <= e["received_at"] <= bf_end]
        per_h = [requests.get(m, 0.0) / window_h for m in mids]
        lanes: dict[str, dict[str, Any]] = {}
        for f in fresh:
            if f["merchant_id"] not in ms:
                continue
            lane = lanes.setdefault(f["lane"], {"max": 0.0, "never": 0, "over": 0, "target": f["target_seconds"],
                                                "over_sellers": []})
            if f["staleness_seconds"] is None:
                lane["never"] += 1
            else:
                lane["max"] = max(lane["max"], f["staleness_seconds"])
                if f["staleness_seconds"] > 2 * f["target_seconds"]:
                    lane["over"] += 1
                    lane["over_sellers"].append(f["merchant_id"])
        out["classes"][cls] = {
            "sellers": len(mids), "customers": by_mid[mids[0]]["customers"], "events": len(lags),
            "unprocessed": unprocessed,
            "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
            "during_events": len(during), "during_p50": percentile(during, 0.5),
            "during_p99": percentile(during, 0.99),
            "req_per_h_mean": sum(per_h) / len(per_h), "req_per_h_max": max(per_h), "budget_per_h": budget_h,
            "lanes": lanes,
        }
    out["over_runs"] = await _over_runs(dsn, out["classes"], start)
    return out


async def _over_runs(dsn: str, classes: dict[str, Any], start: Any) -> list[str]:
    """For the first sellers over 2x a lane's target: that lane's runs in the window, to see why."""
    over = [(mid, lane) for c in classes.values() for lane, v in c["lanes"].items() for mid in v["over_sellers"][:2]]
    lines = []
    conn = await asyncpg.connect(dsn)
    try:
        for mid, lane in over[:6]:
            kind = "sweep" if lane == "sweep" else f"reconcile:{lane}"
            rows = await conn.fetch(
                "SELECT status, extract(epoch FROM started_at - $3)::float8 AS at,"
                " extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 AS secs, counts, error"
                " FROM square.sync_runs WHERE merchant_id = $1 AND kind = $2 AND started_at >= $3 ORDER BY run_id",
                mid, kind, start)
            runs = "; ".join(f"{r['at']:.0f}s {r['status']} {r['secs']:.1f}s "
                             f"{json.loads(r['counts'] or '{}').get('requests', '?')} req"
                             + (f" ({(r['error'] or '')[:60]})" if r["error"] else "") for r in rows)
            lines.append(f"  {mid} {lane}: {len(rows)} runs in the window: {runs or 'none'}")
    finally:
        await conn.close()
    return lines


def report(r: dict[str, Any], opts: argparse.Namespace) -> None:
    label = "split (events | lanes,backfill)" if r["split"] else "one pool (2 workers on every queue)"
    print(f"\n== {label}, scheduler {opts.scheduler}, window {r['window_s']} s, {r['edits']:,} edits ==")
    bb = r["big_backfill"]
    print(f"largest seller's backfill: {bb if bb else 'did not start'}")
    print("| class | sellers x customers | events | unprocessed | lag p50 / p99 | p50 / p99 during the big backfill"
          " (events) |")
    print("|---|---|---|---|---|---|")
    for cls, c in r["classes"].items():
        print(f"| {cls} | {c['sellers']} x {c['customers']:,} | {c['events']:,} | {c['unprocessed']} | "
              f"{c['lag_p50']:.3f} / {c['lag_p99']:.3f} s | {c['during_p50']:.3f} / {c['during_p99']:.3f} s "
              f"({c['during_events']}) |")
    emu = r["emulator"]
    print(f"\nSquare requests per seller per hour, against its budget ({opts.budget_rps:g}/s = "
          f"{opts.budget_rps * 3600:,.0f}/h; the emulator's bucket also allows a burst of 100), counted by the "
          f"emulator over {emu['seconds']:.0f} s:")
    print("| class | requests | requests/seller/h mean / max (seller) | busiest second: requests of budget/s (seller) "
          "| 429s (sellers) | mirror's lane+backfill runs: requests/seller/h mean / max | sellers unaffordable |")
    print("|---|---|---|---|---|---|---|")
    for cls, e in emu["classes"].items():
        c = r["classes"].get(cls, {})
        print(f"| {cls} | {e['requests']:,} | {e['per_h_mean']:,.0f} / {e['per_h_max']:,.0f} "
              f"({e['per_h_max_seller']}) | {e['max_per_second']} of {opts.budget_rps:g} "
              f"({e['max_per_second_seller']}) | {e['429']} ({len(e['sellers_429'])}) | "
              f"{c.get('req_per_h_mean', 0):,.0f} / {c.get('req_per_h_max', 0):,.0f} | {len(e['unaffordable'])} |")
    for cls, e in emu["classes"].items():
        ops = ", ".join(f"{op} {n:,}" for op, n in e["operations"][:5])
        print(f"  {cls}: by operation: {ops or 'none'}")
        if e["sellers_429"]:
            print(f"  {cls}: sellers answered 429: {first_ten(e['sellers_429'])}")
        if e["unaffordable"]:
            print(f"  {cls}: sellers the mirror logged unable to afford their lanes (lanes_unaffordable): "
                  f"{first_ten(e['unaffordable'])}")
    if emu["others"]:
        print(f"  not charged to a seller: {emu['others']}")
    print("staleness bound per lane, max over the class's sellers (target; sellers over 2x; never complete):")
    for cls, c in r["classes"].items():
        parts = [f"{lane} {v['max']:.0f}s ({v['target']}; {v['over']}; {v['never']})" for lane, v in c["lanes"].items()]
        print(f"  {cls}: " + ", ".join(parts))
    for line in r.get("over_runs", []):
        print(line)
    print(f"Square requests, all endpoints: {emu['total']:,} counted by the emulator "
          f"({emu['total'] / max(emu['seconds'], 1):.1f}/s); the workers' metric {r['square_requests_total']:,.0f} "
          f"(429s {r['square_429']:.0f}), of them in lane and backfill runs (sync_runs): "
          f"{r['run_requests_total']:,.0f}")
    print(f"Redis used {r['redis_used_mb']} MB (peak {r['redis_peak_mb']} MB); Postgres database {r['pg_mb']} MB")
    judged = [lane for lane, t in LANE_TARGET_SECONDS.items() if r["window_s"] > 2 * t]
    print(f"lanes this window can judge (window > 2x target): {', '.join(judged) or 'none'}")
    lag_ok = all(c["during_p99"] < 1.0 for c in r["classes"].values() if c["during_events"])
    lag_ok = lag_ok and bool(bb) and all(c["unprocessed"] == 0 for c in r["classes"].values())
    over = [(cls, lane, v["over_sellers"][:5]) for cls, c in r["classes"].items() for lane, v in c["lanes"].items()
            if v["over"]]
    never = [(cls, lane, v["never"]) for cls, c in r["classes"].items() for lane, v in c["lanes"].items()
             if v["never"] and lane in judged]
    unaffordable = {m for m, _ in r["unaffordable"]} | {m.split(" ")[0] for m in r["unaffordable_at_end"]}
    print(f"GOAL event lag p99 < 1 s per class during the big backfill, nothing left unprocessed: "
          f"{'PASS' if lag_ok else 'FAIL'}")
    limited = [s for e in emu["classes"].values() for s in e["sellers_429"]]
    print(f"GOAL no seller over its budget (no 429 from the emulator's rate limiter for any seller): "
          f"{'PASS' if not limited else 'FAIL: ' + first_ten(limited)}")
    bad = [o for o in over if not set(o[2]) <= unaffordable] + [n for n in never]
    print(f"GOAL every judged lane's bound within 2x target for the sellers that can afford it: "
          f"{'PASS' if not bad else 'FAIL'} {bad[:10] if bad else ''}")
    print(f"sellers logged unable to afford their lanes (lanes_unaffordable): {len(unaffordable)}; still so at the "
          f"end (square.lane_budgets): {len(r['unaffordable_at_end'])}"
          f"{': ' + first_ten(r['unaffordable_at_end']) if r['unaffordable_at_end'] else ''}")


async def main(opts: argparse.Namespace) -> int:
    sellers = plan_sellers(opts.sellers, opts.scale, opts.seed)
    sizes = {cls: (sum(1 for s in sellers if s["class"] == cls), next((s["customers"] for s in sellers
                                                                       if s["class"] == cls), 0)) for cls in CLASSES}
    print(f"scaling: directory sizes divided by {opts.scale:g} ("
          + ", ".join(f"{cls} {n} x {BASE_SIZES[cls]:,} -> {c:,}" for cls, (n, c) in sizes.items() if n)
          + f"); window {opts.duration:.0f} s (the issue's 10 minutes x {opts.duration / 600:.2f}); time not scaled "
          f"(production lane targets); {opts.rate:g} edits/s aggregate, x{opts.burst_factor:g} for "
          f"{opts.burst_seconds:g} s every {opts.burst_every:g} s; {opts.latency_ms:g} ms API latency; budget "
          f"{opts.budget_rps:g} requests/s per seller; scheduler {opts.scheduler}, lane share "
          f"{opts.lane_share if opts.lane_share is not None else 'default (LANE_BUDGET_SHARE)'}", flush=True)
    modes = [False, True] if opts.compare else [opts.split]
    results = []
    for split in modes:
        r = await run_once(opts, split)
        report(r, opts)
        results.append(r)
    if opts.compare:
        print("\nsplit / one pool, event lag p99 during the big backfill, per class:")
        for cls in results[0]["classes"]:
            a, b = results[0]["classes"][cls]["during_p99"], results[1]["classes"][cls]["during_p99"]
            print(f"  {cls}: {b:.3f} / {a:.3f} s = {b / a if a else float('nan'):.2f}")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sellers", type=int, default=1000)
    p.add_argument("--scale", type=float, default=10.0, help="divide every directory size by this")
    p.add_argument("--duration", type=float, default=600.0, help="measured window, seconds (the issue's 10 minutes)")
    p.add_argument("--rate", type=float, default=50.0, help="aggregate Dashboard edits (webhooks) per second")
    p.add_argument("--burst-factor", type=float, default=4.0)
    p.add_argument("--burst-seconds", type=float, default=5.0)
    p.add_argument("--burst-every", type=float, default=60.0)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--budget-rps", type=float, default=50.0,
                   help="each seller's request budget: SQUARE_MAX_REQUESTS_PER_SECOND and the emulator's rate limit")
    p.add_argument("--backfill-at", type=float, default=0.3,
                   help="when the big backfill is queued, as a share of the window")
    p.add_argument("--db-pool-size", type=int, default=0, help="WORKER_DB_POOL_SIZE (default: the setting's)")
    p.add_argument("--scheduler", choices=("cron", "budget"), default="cron", help="the workers' LANE_SCHEDULER")
    p.add_argument("--lane-share", type=float, default=None,
                   help="the workers' LANE_BUDGET_SHARE (default: the setting's own default)")
    p.add_argument("--split", action="store_true", help="one --queues events worker + one --queues lanes,backfill")
    p.add_argument("--compare", action="store_true", help="run without and then with --split")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--keep-logs", action="store_true", help="copy every process's log to /tmp/bench-sellers-logs-*")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL")
                   or "postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN (a database is created)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
