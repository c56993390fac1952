"""The custom_attributes reconcile lane against the emulator and real Postgres: definitions re-listed, changed
values found key by key and read again; changes made without a webhook (lost deliveries) are healed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.settings import Settings
from square_mirror.square_api import SquareClient
from tests.factories import STRING_SCHEMA
from tests.mirror_check import assert_mirror_matches, emulator_client, square_call
from worker import runs
from worker.backfill import backfill
from worker.context import WorkerContext, build_context
from worker.reconcile import run_lane

NUMBER_SCHEMA = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.Number"}


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=11)) as handle:
        yield handle


@pytest.fixture
async def ctx(emu: EmulatorHandle, db_pool: asyncpg.Pool) -> AsyncIterator[WorkerContext]:
    client: SquareClient = emulator_client(emu)
    context = await build_context(Settings(), pool=db_pool, client=client)
    yield context
    await context.aclose()
    await client.close()


async def _define(emu: EmulatorHandle, key: str, name: str, schema: dict[str, Any]) -> None:
    await square_call(emu, "POST", "/v2/customers/custom-attribute-definitions", {"custom_attribute_definition": {
        "key": key, "name": name, "description": name, "schema": schema, "visibility": "VISIBILITY_READ_ONLY"}})


async def _set(emu: EmulatorHandle, cid: str, key: str, value: Any) -> None:
    await square_call(emu, "POST", f"/v2/customers/{cid}/custom-attributes/{key}", {"custom_attribute": {
        "value": value}})


async def _lane(ctx: WorkerContext, merchant_id: str) -> runs.Run:
    run = await run_lane(ctx, merchant_id, "custom_attributes")
    assert run.status == runs.SUCCEEDED, run.error
    return run


async def test_lane_heals_values_and_definitions_set_without_a_webhook(
    emu: EmulatorHandle, ctx: WorkerContext, db_pool: asyncpg.Pool
) -> None:
    await emu.seed(customers=60)
    assert (await backfill(ctx.sync, emu.merchant_id, concurrency=2)).status == runs.SUCCEEDED
    customers = sorted((await emu.truth())["customers"])
    await _define(emu, "drink", "Favorite drink", STRING_SCHEMA)
    await _define(emu, "visits", "Visits", NUMBER_SCHEMA)
    for cid in customers[:10]:
        await _set(emu, cid, "drink", f"Drink {cid[-3:]}")
    for cid in customers[5:12]:
        await _set(emu, cid, "visits", "3")

    run = await _lane(ctx, emu.merchant_id)
    await assert_mirror_matches(db_pool, emu)
    # Only the customers holding values were read: one ListCustomerCustomAttributes each.
    assert run.counts["custom_attribute_reads"] == 12
    typed = await db_pool.fetchval("SELECT number_value FROM square.customer_custom_attributes_typed "
                                   "WHERE customer_id = $1 AND key = 'visits'", customers[6])
    assert typed == 3

    await _set(emu, customers[0], "drink", "Changed")
    await square_call(emu, "DELETE", "/v2/customers/custom-attribute-definitions/visits")
    run = await _lane(ctx, emu.merchant_id)
    assert run.counts["custom_attribute_definitions_ended"] == 1
    assert run.counts["custom_attribute_reads"] >= 1  # the changed value's customer, found by its updated_at
    await assert_mirror_matches(db_pool, emu)
    assert await db_pool.fetchval("SELECT count(*) FROM square.customer_custom_attributes "
                                  "WHERE key = 'visits' AND deleted_at IS NULL") == 0


async def test_lane_reads_nothing_when_nothing_changed(emu: EmulatorHandle, ctx: WorkerContext,
                                                       db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=20)
    assert (await backfill(ctx.sync, emu.merchant_id, concurrency=2)).status == runs.SUCCEEDED
    await _define(emu, "drink", "Favorite drink", STRING_SCHEMA)
    cid = sorted((await emu.truth())["customers"])[0]
    await _set(emu, cid, "drink", "Tea")
    await _lane(ctx, emu.merchant_id)
    await db_pool.execute("UPDATE square.sync_state SET watermark = now() + interval '1 hour' "
                          "WHERE lane = 'custom_attributes'")  # as if the last pass began after the change
    run = await _lane(ctx, emu.merchant_id)
    assert run.counts.get("custom_attribute_reads", 0) == 0
    await assert_mirror_matches(db_pool, emu)
