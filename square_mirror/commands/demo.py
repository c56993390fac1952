"""`square-mirror demo`: the whole pipeline on one machine in a minute, with nothing configured.

It starts (or uses DATABASE_URL / REDIS_URL) Postgres and Redis, the Square emulator, the receiver and a worker
as real processes, plays a story that exercises every hard part (backfill, live creates and updates, a group
change, a delete, a merge, a segment change only reconcile can see, a seller's custom field set, changed and
deleted, a burst of duplicated and reordered deliveries), then checks the mirror against the emulator's truth and
prints what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from square_mirror.convergence import mirror_diff
from square_mirror.db import create_pool, migrate
from square_mirror.devstack import EmulatorClient, Stack, cli_command, emulator_args, run_cli, wait_for
from square_mirror.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, tcp_reachable
from square_mirror.queries import queries

HELP = (
    "Start Postgres and Redis (embedded unless DATABASE_URL / REDIS_URL are set), the Square emulator, the "
    "receiver and a worker; play a story of creates, updates, a group change, a delete, a merge, a segment "
    "change, a custom attribute set, changed and deleted, and a burst of duplicated, out-of-order deliveries; "
    "check the mirror against the emulator. "
    "--keep-running leaves everything up until Ctrl-C."
)
EXAMPLE_SQL = """\
-- live customers and their groups
SELECT c.given_name, c.family_name, m.group_name
FROM square.customers_current c JOIN square.customer_group_memberships m
  ON m.merchant_id = c.merchant_id AND m.customer_id = c.id LIMIT 10;
-- segment sizes
SELECT segment_name, count(*) FROM square.customer_segment_memberships GROUP BY 1 ORDER BY 2 DESC;
-- where did merged-away customers go?
SELECT customer_id, current_customer_id, merge_depth FROM square.customer_id_resolution WHERE merge_depth > 0;
-- custom attributes, typed by their definitions
SELECT name, data_type, text_value, number_value, boolean_value, date_value, selection_names
FROM square.customer_custom_attributes_typed LIMIT 10;
-- one custom field across customers, by its name
SELECT id, custom_attributes->>'Usual order' AS usual_order FROM square.customers_current
WHERE custom_attributes ? 'Usual order';
-- what happened to each webhook event
SELECT type, outcome, count(*) FROM square.webhook_events GROUP BY 1, 2 ORDER BY 1, 2;"""
# The seeded custom attributes: every data type, owned by the application, another app and the seller's Dashboard.
SEEDED_CUSTOM_ATTRIBUTES = '{"definitions": 8, "share": 0.3, "min": 1, "max": 3}'
STRING_SCHEMA = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=int, default=300, help="customers the emulator starts with (300)")
    parser.add_argument("--seed", type=int, default=7, help="emulator seed (7)")
    parser.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for convergence (90)")


async def _story(square: EmulatorClient, stack: Stack, env: dict[str, str], say: Any) -> tuple[str, str]:
    """Plays the story; returns the (customer, key) whose custom attribute it set and changed."""
    mid = square.merchant_id
    say("1/8 backfill: everything the seller already has")
    code = await run_cli(stack, "backfill", ["backfill", "--merchant", mid, "--no-progress"], env)
    if code != 0:
        raise RuntimeError(f"backfill failed (exit {code}); see {stack.workdir / 'backfill.log'}")

    say("2/8 live creates and updates (webhooks -> receiver -> queue -> worker)")
    created = []
    for i in range(5):
        body = {"idempotency_key": str(uuid.uuid4()), "given_name": f"Demo{i}", "family_name": "Customer",
                "email_address": f"demo{i}@example.com", "phone_number": f"+1206555{1000 + i}"}
        created.append((await square.call("POST", "/v2/customers", body))["customer"])
    for customer in created:
        await square.call("PUT", f"/v2/customers/{customer['id']}",
                          {"nickname": "updated", "version": customer["version"]})

    say("3/8 a group change")
    group = (await square.call("POST", "/v2/customers/groups",
                               {"idempotency_key": str(uuid.uuid4()), "group": {"name": "Demo VIPs"}}))["group"]
    await square.call("PUT", f"/v2/customers/{created[0]['id']}/groups/{group['id']}")

    say("4/8 a delete")
    await square.call("DELETE", f"/v2/customers/{created[1]['id']}")

    say("5/8 a merge (Dashboard-only in EmulatorClient: emulator admin API)")
    await square.admin("POST", "/merge", {"merchant_id": mid, "customer_ids": [created[2]["id"], created[3]["id"]]})

    say("6/8 a segment change (no webhook, no version bump) healed by the reconcile segments lane")
    segment = (await square.admin("POST", "/segments", {"merchant_id": mid, "name": "Lunch regulars"}))["segment"]
    await square.admin("PUT", f"/segments/{segment['id']}/members/{created[4]['id']}")
    code = await run_cli(stack, "reconcile", ["reconcile", "--merchant", mid, "--lane", "segments"], env)
    if code != 0:
        raise RuntimeError(f"reconcile failed (exit {code}); see {stack.workdir / 'reconcile.log'}")

    say("7/8 a seller's custom field: set, changed, and deleted on another customer (applied from the webhooks, "
        "no API call)")
    field = (await square.admin("POST", "/custom-attribute-definitions", {
        "merchant_id": mid, "owner": "square",
        "definition": {"name": "Usual order", "description": "What they usually order", "schema": STRING_SCHEMA}},
    ))["custom_attribute_definition"]
    key = field["key"]
    for customer, drink in ((created[0], "Flat white"), (created[4], "Chai latte")):
        await square.admin("PUT", f"/customers/{customer['id']}/custom-attributes/{key}",
                           {"merchant_id": mid, "value": drink})
    await square.admin("PUT", f"/customers/{created[0]['id']}/custom-attributes/{key}",
                       {"merchant_id": mid, "value": "Oat flat white"})
    await square.admin("DELETE", f"/customers/{created[4]['id']}/custom-attributes/{key}?merchant_id={mid}")

    say("8/8 a burst of duplicated and out-of-order deliveries")
    await square.admin("PUT", "/faults", {"webhook_duplicate_rate": 0.5, "webhook_reorder_rate": 0.5,
                                          "webhook_reorder_max_delay_seconds": 1.0})
    listed = (await square.call("GET", "/v2/customers?limit=20"))["customers"]
    for round_ in range(3):
        for customer in listed:
            fresh = (await square.call("GET", f"/v2/customers/{customer['id']}"))["customer"]
            await square.call("PUT", f"/v2/customers/{customer['id']}",
                              {"reference_id": f"burst-{round_}", "version": fresh["version"]})
    await square.admin("POST", "/deliveries/drain?timeout=30")
    await square.admin("PUT", "/faults", {"webhook_duplicate_rate": 0, "webhook_reorder_rate": 0})
    return created[0]["id"], key


async def _custom_attribute_lines(pool: asyncpg.Pool, mid: str, story: tuple[str, str]) -> list[str]:
    lines = ["custom attributes (square.customer_custom_attributes_typed): " + ", ".join(
        f"{r['name']} ({r['data_type']}) {r['n']}" for r in await pool.fetch(queries.get("demo_custom_attributes"),
                                                                           mid))]
    lines.append(f"the story's custom field, customer {story[0]} (square.customer_custom_attribute_versions):")
    for r in await pool.fetch(queries.get("demo_custom_attribute_story"), mid, *story):
        lines.append(f"  v{r['version']} {r['value']!r} from {r['valid_from']:%H:%M:%S}"
                     + (f" until {r['valid_to']:%H:%M:%S} ({r['closed_reason']})" if r["valid_to"] else " (current)"))
    return lines


async def _summary(pool: asyncpg.Pool, mid: str, diffs: list[str], converge_s: float, story: tuple[str, str]) -> str:
    outcomes = await pool.fetch(queries.get("demo_outcomes"), mid)
    lag = await pool.fetchrow(queries.get("demo_lag"), mid)
    tables = ("customers_current", "customers", "customer_groups", "customer_segments", "customer_group_members",
              "customer_segment_members", "customer_merges", "customer_custom_attribute_definitions",
              "customer_custom_attributes", "webhook_events", "sync_runs", "customer_versions")
    # Inline on purpose: one statement per table name, built from the fixed list above.
    counts = {t: await pool.fetchval(f"SELECT count(*) FROM square.{t}") for t in tables}  # noqa: S608
    lines = ["", "== summary =="]
    lines.append("events processed by outcome:")
    lines.extend(f"  {r['type']:<18} {r['outcome'] or 'in progress':<12} {r['n']}" for r in outcomes)
    if lag and lag["p50"] is not None:
        lines.append(f"receipt-to-row lag: p50 {lag['p50'] * 1000:.0f} ms, p99 {lag['p99'] * 1000:.0f} ms")
    lines.append("rows: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    lines.extend(await _custom_attribute_lines(pool, mid, story))
    if diffs:
        lines.append(f"convergence check: {len(diffs)} differences from the emulator's truth:")
        lines.extend(f"  {d}" for d in diffs[:20])
    else:
        lines.append(f"convergence check: the mirror equals the emulator's truth (converged in {converge_s:.1f} s)")
    lines.append("")
    lines.append("try:")
    lines.extend(f"  {line}" for line in EXAMPLE_SQL.splitlines())
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    stack = Stack(Path(tempfile.mkdtemp(prefix="square-mirror-demo-")))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        return await _demo(args, stack, stop, say)
    finally:
        say("stopping every process the demo started...")
        stack.stop()


async def _demo(args: argparse.Namespace, stack: Stack, stop: asyncio.Event, say: Any) -> int:
    dsn = os.environ.get("DATABASE_URL", "").strip()
    if not dsn:
        pg = EmbeddedPostgres(stack.workdir / "pg")
        stack.embedded.append(pg)
        dsn = pg.start()
        say("embedded Postgres started")
    redis_url = os.environ.get("REDIS_URL", "").strip()
    if not redis_url:
        redis_server = EmbeddedRedis()
        stack.embedded.append(redis_server)
        redis_url = redis_server.start()
        say("embedded Redis started")
    await migrate(dsn)

    emulator_port, receiver_port, metrics_port = free_port(), free_port(), free_port()
    signature_key = secrets.token_urlsafe(24)
    hook_url = f"http://127.0.0.1:{receiver_port}/square/webhooks"
    emulator = stack.start("emulator", cli_command(*emulator_args(
        emulator_port, args.seed, args.customers, hook_url, signature_key,
        custom_attributes=SEEDED_CUSTOM_ATTRIBUTES)), dict(os.environ))
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    await wait_for(lambda: tcp_reachable("127.0.0.1", emulator_port), "the emulator", proc=emulator)
    first_line = (stack.workdir / "emulator.log").read_text().splitlines()[0]
    announced = orjson.loads(first_line)
    seller = announced["sellers"][0]
    merchant_id, token = seller["merchant_id"], seller["token"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUARE_")}
    env.update({
        "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SQUARE_BASE_URL": emulator_url,
        "SQUARE_ACCESS_TOKEN": token, "SQUARE_MERCHANT_ID": merchant_id,
        "SQUARE_APPLICATION_ID": announced["application_id"],
        "SQUARE_WEBHOOK_SIGNATURE_KEY": signature_key, "SQUARE_WEBHOOK_NOTIFICATION_URL": hook_url,
        "WORKER_METRICS_PORT": str(metrics_port), "SQUARE_MAX_REQUESTS_PER_SECOND": "0",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
    })
    receiver = stack.start("receiver", cli_command("webhooks", "--host", "127.0.0.1", "--port", str(receiver_port)),
                           env)
    worker = stack.start("worker", cli_command("worker"), env)
    await wait_for(lambda: tcp_reachable("127.0.0.1", receiver_port), "the receiver", proc=receiver)
    await wait_for(lambda: tcp_reachable("127.0.0.1", metrics_port), "the worker", proc=worker)
    say(f"emulator {emulator_url} (seller {merchant_id}, {args.customers} customers), receiver {hook_url}, "
        f"worker metrics http://127.0.0.1:{metrics_port}/metrics")

    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        async with aiohttp.ClientSession() as session:
            square = EmulatorClient(session, emulator_url, token, merchant_id)
            story = await _story(square, stack, env, say)
            say("waiting for the queue to drain and the mirror to converge...")
            started = time.monotonic()
            diffs: list[str] = ["not checked yet"]
            # Converged = the mirror equals the truth. (The queue need not be empty: the workers' cron lanes
            # keep queueing reconcile jobs, and anything still queued can only be stale by then.)
            while time.monotonic() - started < args.timeout:
                truth = await square.admin("GET", f"/state?merchant_id={merchant_id}")
                diffs = await mirror_diff(pool, truth, merchant_id)
                if not diffs:
                    break
                await asyncio.sleep(0.5)
            say(await _summary(pool, merchant_id, diffs, time.monotonic() - started, story))
        if args.keep_running:
            say("")
            say("everything keeps running; Ctrl-C stops it all")
            say(f"  psql '{dsn}'")
            say(f"  emulator: {emulator_url}  (token {token})")
            say(f"  receiver: {hook_url}  metrics http://127.0.0.1:{receiver_port}/metrics")
            say(f"  worker metrics: http://127.0.0.1:{metrics_port}/metrics")
            say(f"  logs: {stack.workdir}")
            await stop.wait()
        return 0 if not diffs else 1
    finally:
        await pool.close()
