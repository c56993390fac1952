"""The backfill's custom-attribute phase against the emulator and real Postgres: it equals Square's state, reads
only the customers that hold values (plus the hidden ones, by ID), ends what Square deleted, and resumes."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.convergence import PUBLIC_FIELDS
from square_mirror.errors import SquareInvalidRequest
from tests.mirror_check import assert_mirror_matches, emulator_client, square_call
from worker import runs
from worker.backfill import backfill
from worker.sync import SyncContext, sync_customers

SEEDED = {"definitions": 8, "share": 0.3, "min": 1, "max": 5, "hidden": 1}
READERS = 16


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=23)) as handle:
        yield handle


@pytest.fixture
async def ctx(emu: EmulatorHandle, db_pool: asyncpg.Pool) -> AsyncIterator[SyncContext]:
    client = emulator_client(emu)
    yield SyncContext(db_pool, client)
    await client.close()


class Calls:
    """The client's Square calls of the custom-attribute part, counted at the client (not by the run's counts)."""

    def __init__(self, ctx: SyncContext) -> None:
        self.reads: Counter[str] = Counter()  # ListCustomerCustomAttributes, by customer
        self.searches: Counter[str] = Counter()  # SearchCustomers pages with the custom_attribute filter, by key
        self.definition_pages = 0
        client = ctx.client
        list_values, search, list_definitions = (client.list_customer_custom_attributes, client.search_customers,
                                                 client.list_custom_attribute_definitions)

        async def counted_read(merchant_id: str, customer_id: str, **kw: Any) -> dict[str, Any]:
            self.reads[customer_id] += 1
            return await list_values(merchant_id, customer_id, **kw)

        async def counted_search(merchant_id: str, body: Any) -> dict[str, Any]:
            flt = ((body.get("query") or {}).get("filter") or {}).get("custom_attribute")
            if flt is not None:
                self.searches[flt["filters"][0]["key"]] += 1
            return await search(merchant_id, body)

        async def counted_definitions(merchant_id: str, **kw: Any) -> dict[str, Any]:
            self.definition_pages += 1
            return await list_definitions(merchant_id, **kw)

        client.list_customer_custom_attributes = counted_read  # type: ignore[method-assign]
        client.search_customers = counted_search  # type: ignore[method-assign]
        client.list_custom_attribute_definitions = counted_definitions  # type: ignore[method-assign]


def hidden(doc: dict[str, Any]) -> bool:
    return not any(doc.get(f) for f in PUBLIC_FIELDS)


def square_state(truth: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """What the application sees in Square: definitions by key, values by (customer, key), of live customers."""
    definitions = {k: (d.get("name"), d.get("schema"), d.get("visibility"), d.get("version"))
                   for k, d in truth["custom_attribute_definitions"].items()}
    values = {(cid, key): (v["value"], v["version"], v.get("visibility"))
              for cid, held in truth["custom_attributes"].items() if cid in truth["customers"]
              for key, v in held.items()}
    return definitions, values


async def mirror_state(pool: asyncpg.Pool, merchant_id: str) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    definitions = {r["key"]: (r["name"], r["schema"], r["visibility"], r["version"]) for r in await pool.fetch(
        "SELECT key, name, schema, visibility, version FROM square.customer_custom_attribute_definitions"
        " WHERE merchant_id = $1 AND deleted_at IS NULL", merchant_id)}
    values = {(r["customer_id"], r["key"]): (r["value"], r["version"], r["visibility"]) for r in await pool.fetch(
        "SELECT customer_id, key, value, version, visibility FROM square.customer_custom_attributes"
        " WHERE merchant_id = $1 AND deleted_at IS NULL", merchant_id)}
    return definitions, values


async def assert_attributes_match(pool: asyncpg.Pool, emu: EmulatorHandle) -> None:
    want_definitions, want_values = square_state(await emu.truth())
    have_definitions, have_values = await mirror_state(pool, emu.merchant_id)
    assert have_definitions == want_definitions
    missing = {k: v for k, v in want_values.items() if have_values.get(k) != v}
    extra = {k: v for k, v in have_values.items() if k not in want_values}
    assert not missing and not extra, (list(missing.items())[:5], list(extra.items())[:5])
    assert want_values  # the comparison compared something


def string_key(truth: dict[str, Any]) -> str:
    """A definition of the application's own (simple key) holding text."""
    return next(k for k, d in truth["custom_attribute_definitions"].items()
                if ":" not in k and str((d.get("schema") or {}).get("$ref", "")).endswith("String"))


async def give_values(emu: EmulatorHandle, key: str, customer_ids: list[str], value: str) -> None:
    for i in range(0, len(customer_ids), 25):
        chunk = customer_ids[i:i + 25]
        answer = await square_call(emu, "POST", "/v2/customers/custom-attributes/bulk-upsert", {"values": {
            f"r{n}": {"customer_id": cid, "custom_attribute": {"key": key, "value": value}}
            for n, cid in enumerate(chunk)}})
        assert all("errors" not in v for v in answer["values"].values()), answer


async def seed_with_hidden_holders(emu: EmulatorHandle, ctx: SyncContext, customers: int) -> list[str]:
    """Seed a directory with custom attributes and 6 instant profiles, 3 of them holding a value; the mirror learns
    the instant profiles by ID (as their webhooks would tell it). Returns the instant profiles' IDs."""
    await emu.seed(customers=customers, instant_profiles=6, custom_attributes=SEEDED)
    truth = await emu.truth()
    instant = sorted(cid for cid, doc in truth["customers"].items() if hidden(doc))
    assert len(instant) == 6
    await give_values(emu, string_key(truth), instant[:3], "Oat latte")
    await sync_customers(ctx, emu.merchant_id, instant)
    return instant


async def test_backfill_equals_square_custom_attributes_including_hidden_profiles(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await seed_with_hidden_holders(emu, ctx, 800)
    run = await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)
    assert run.status == runs.SUCCEEDED, run.error
    await assert_attributes_match(db_pool, emu)
    await assert_mirror_matches(db_pool, emu)
    assert run.checkpoint["phase"] == "done"
    assert run.checkpoint["custom_attributes"]["searched"] and run.checkpoint["custom_attributes"]["by_id_done"]


async def test_reads_only_customers_with_values_and_hidden_ones_and_meets_the_request_goal(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    instant = await seed_with_hidden_holders(emu, ctx, 1500)
    truth = await emu.truth()
    _, values = square_state(truth)
    with_values = {cid for cid, _ in values}
    listable_holders: Counter[str] = Counter(key for cid, key in values if not hidden(truth["customers"][cid]))
    calls = Calls(ctx)

    run = await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)
    assert run.status == runs.SUCCEEDED, run.error
    # ListCustomerCustomAttributes: once per customer with a value, plus the hidden ones the mirror holds (read by
    # ID: no search finds them), and never for another customer without values.
    assert set(calls.reads) == with_values | set(instant)
    assert all(n == 1 for n in calls.reads.values())
    assert len(with_values) < 0.5 * len(truth["customers"])  # most customers have none, and cost nothing
    # SearchCustomers: per definition key, one request per page of the customers holding it (at least one page).
    keys = set(truth["custom_attribute_definitions"])
    assert set(calls.searches) == keys
    assert calls.searches == {k: max(1, math.ceil(listable_holders[k] / 100)) for k in keys}
    assert calls.definition_pages == 1
    # The run reports the same requests, by endpoint.
    counts = run.counts
    assert counts["custom_attribute_reads"] == sum(calls.reads.values())
    assert counts["custom_attribute_searches"] == sum(calls.searches.values())
    assert counts["custom_attribute_definition_pages"] == 1
    assert counts["custom_attribute_customers_with_values"] == len(with_values)
    assert counts["custom_attribute_values_written"] == len(values)
    assert counts["custom_attribute_hidden_reads"] == len(instant)
    # The goal for the custom-attribute part.
    requests = counts["custom_attribute_reads"] + counts["custom_attribute_searches"] + calls.definition_pages
    assert requests <= 1.05 * len(with_values) + counts["custom_attribute_searches"] + calls.definition_pages
    await assert_attributes_match(db_pool, emu)


async def test_values_and_definitions_deleted_in_square_end_on_the_next_backfill(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await seed_with_hidden_holders(emu, ctx, 600)
    assert (await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)).status == \
        runs.SUCCEEDED
    truth = await emu.truth()
    held: dict[str, list[str]] = {}
    for cid, values in truth["custom_attributes"].items():
        if not hidden(truth["customers"][cid]):
            held[cid] = sorted(values)
    definitions = truth["custom_attribute_definitions"]
    own = sorted(k for k in definitions if ":" not in k)
    doomed = own[0]  # a definition of the application's own: deleting it deletes its values on every profile
    # Values this application may delete: of its own definitions, or of others' READ_WRITE_VALUES ones.
    writable = {k for k, d in definitions.items()
                if k != doomed and (":" not in k or d["visibility"] == "VISIBILITY_READ_WRITE_VALUES")}
    several = next(c for c, keys in held.items()
                   if len(keys) >= 3 and doomed not in keys and writable & set(keys))
    single = next(c for c, keys in held.items() if len(keys) == 1 and keys[0] in writable)
    gone = next(c for c, keys in held.items() if c not in (several, single) and doomed not in keys)
    removed = {several: sorted(writable & set(held[several]))[0], single: held[single][0]}
    # While no webhook is delivered: one value of a customer keeping others, the only value of another (no search
    # finds that one any more), a customer holding values deleted, and a definition deleted.
    for cid, key in removed.items():
        assert await square_call(emu, "DELETE", f"/v2/customers/{cid}/custom-attributes/{key}") == {}
    assert await square_call(emu, "DELETE", f"/v2/customers/{gone}") == {}
    assert await square_call(emu, "DELETE", f"/v2/customers/custom-attribute-definitions/{doomed}") == {}
    doomed_holders = [c for c, keys in held.items() if doomed in keys]
    assert doomed_holders

    calls = Calls(ctx)
    run = await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)
    assert run.status == runs.SUCCEEDED, run.error
    await assert_attributes_match(db_pool, emu)
    ended = {(r["customer_id"], r["key"]) for r in await db_pool.fetch(
        "SELECT customer_id, key FROM square.customer_custom_attributes WHERE merchant_id = $1"
        " AND deleted_at IS NOT NULL", emu.merchant_id)}
    assert set(removed.items()) <= ended
    assert {(gone, k) for k in held[gone]} <= ended
    assert {(c, doomed) for c in doomed_holders} <= ended
    assert await db_pool.fetchval(
        "SELECT deleted_at IS NOT NULL FROM square.customer_custom_attribute_definitions WHERE merchant_id = $1"
        " AND key = $2", emu.merchant_id, doomed)
    assert run.counts["custom_attribute_definitions_ended"] == 1
    # No search finds `single` any more: the values the mirror held for it were read again by ID. `gone`'s ended
    # with its tombstone (inference), without a read.
    assert run.counts["custom_attribute_rechecks"] == 1 and calls.reads[single] == 1
    assert gone not in calls.reads


async def test_resumed_run_does_not_read_finished_customers_again(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await emu.seed(customers=2000, custom_attributes=SEEDED)
    original = ctx.client.list_customer_custom_attributes
    reads = 0

    async def checkpointed_reads() -> list[str]:
        row = await runs.last_run(db_pool, emu.merchant_id, "backfill")
        return list(((row["checkpoint"] or {}).get("custom_attributes") or {}).get("read") or []) if row else []

    async def dying_read(merchant_id: str, customer_id: str, **kw: Any) -> dict[str, Any]:
        """The process is killed once reads are committed in the checkpoint, and others are not."""
        nonlocal reads
        reads += 1
        if reads > 250:  # the first batch of written reads is committed once 200 reads are done
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not await checkpointed_reads():
                if loop.time() > deadline:
                    raise AssertionError("no read was ever checkpointed")
                await asyncio.sleep(0.02)
            raise asyncio.CancelledError
        return await original(merchant_id, customer_id, **kw)

    ctx.client.list_customer_custom_attributes = dying_read  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)
    ctx.client.list_customer_custom_attributes = original  # type: ignore[method-assign]
    first = await runs.last_run(db_pool, emu.merchant_id, "backfill")
    assert first is not None and first["status"] == "interrupted"
    read_before = set(first["checkpoint"]["custom_attributes"]["read"])
    assert len(read_before) >= 200

    calls = Calls(ctx)
    run = await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)
    assert run.status == runs.SUCCEEDED, run.error
    assert run.checkpoint["resumed_from"] == first["run_id"]
    assert not read_before & set(calls.reads)  # finished customers are not read again
    _, values = square_state(await emu.truth())
    with_values = {cid for cid, _ in values}
    assert set(calls.reads) | read_before >= with_values
    assert len(calls.reads) <= len(with_values) - len(read_before) + READERS  # at most the reads in flight again
    await assert_attributes_match(db_pool, emu)
    await assert_mirror_matches(db_pool, emu)


async def test_expired_cursor_restarts_that_keys_search(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await emu.seed(customers=1500, custom_attributes=SEEDED)
    original = ctx.client.search_customers
    expired: set[str] = set()

    async def expiring(merchant_id: str, body: Any) -> dict[str, Any]:
        flt = ((body.get("query") or {}).get("filter") or {}).get("custom_attribute")
        if flt is not None and body.get("cursor") and flt["filters"][0]["key"] not in expired:
            expired.add(flt["filters"][0]["key"])  # each key's first cursor has expired
            raise SquareInvalidRequest("SearchCustomers: 400 INVALID_CURSOR", status=400,
                                       errors=[{"code": "INVALID_CURSOR", "category": "INVALID_REQUEST_ERROR"}])
        return await original(merchant_id, body)

    ctx.client.search_customers = expiring  # type: ignore[method-assign]
    run = await backfill(ctx, emu.merchant_id, concurrency=4, attribute_concurrency=READERS)
    assert run.status == runs.SUCCEEDED, run.error
    assert expired and run.counts["cursor_restarts"] == len(expired)
    await assert_attributes_match(db_pool, emu)
