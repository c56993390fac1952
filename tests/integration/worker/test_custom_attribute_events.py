"""Custom-attribute and definition events through process_event: applied from the payload, version-guarded,
without a Square request (real Postgres, Redis and emulator)."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

from emulator.config import EmulatorConfig, Knobs
from square_mirror.devstack import EmulatorClient
from square_mirror.jobs import build_event_job
from tests.factories import STRING_SCHEMA, attribute_definition, custom_attribute, custom_attribute_event
from tests.integration.worker.support import Harness, harness
from tests.mirror_check import assert_mirror_matches

SELECTION = {"type": "array", "maxItems": 1, "uniqueItems": True,
             "items": {"enum": ["u-small", "u-medium", "u-large"], "names": ["Small", "Medium", "Large"]}}


async def _known_customer(h: Harness) -> str:
    """A customer the mirror has already synced."""
    rec, _ = h.state.create_customer({"given_name": "Ada"})
    [payload] = h.payloads()
    assert await h.run(payload) == "applied"
    return rec.id


def _job(h: Harness, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return build_event_job(custom_attribute_event(obj, merchant_id=h.merchant_id, **kw))


async def _value(pool: asyncpg.Pool, cid: str, key: str = "favorite-drink") -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT value, version, visibility, deleted_at FROM square.customer_custom_attributes "
                               "WHERE customer_id = $1 AND key = $2", cid, key)


async def test_value_event_is_applied_from_its_payload_without_a_square_request(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        calls = h.api_calls
        assert await h.run(_job(h, custom_attribute(value="Flat white"), customer_id=cid)) == "applied"
        assert await h.run(_job(h, custom_attribute(value="Oat latte", version=2), customer_id=cid)) == "applied"
        assert h.api_calls == calls
        row = await _value(db_pool, cid)
        assert row is not None and (row["value"], row["version"], row["deleted_at"]) == ("Oat latte", 2, None)


async def test_owned_and_visible_twins_and_duplicates_change_nothing(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        attr = custom_attribute(value="Mocha", version=3)
        owned = _job(h, attr, customer_id=cid, event_type="customer.custom_attribute.owned.updated")
        visible = _job(h, attr, customer_id=cid, event_type="customer.custom_attribute.visible.updated")
        deprecated = _job(h, attr, customer_id=cid, event_type="customer.custom_attribute.public.updated")
        assert await h.run(visible) == "applied"
        assert await h.run(owned) == "stale"
        assert await h.run(deprecated) == "stale"
        assert await h.run(visible) == "duplicate"
        assert await db_pool.fetchval("SELECT count(*) FROM square.customer_custom_attribute_versions_closed") == 0


async def test_older_versions_lose_and_a_delete_is_final_for_its_generation(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        v1, v2 = custom_attribute(value="A", version=1), custom_attribute(value="B", version=2)
        deleted = _job(h, v2, customer_id=cid, event_type="customer.custom_attribute.visible.deleted")
        assert await h.run(_job(h, v2, customer_id=cid)) == "applied"
        assert await h.run(_job(h, v1, customer_id=cid)) == "stale"
        assert await h.run(deleted) == "deleted"
        assert await h.run(_job(h, v2, customer_id=cid)) == "stale"  # a late twin cannot bring it back
        row = await _value(db_pool, cid)
        assert row is not None and row["deleted_at"] is not None
        # Made again: versions start over at 1, and the later generation wins.
        again = custom_attribute(value="C", version=1, created=10)
        assert await h.run(_job(h, again, customer_id=cid)) == "applied"
        row = await _value(db_pool, cid)
        assert row is not None and (row["value"], row["version"], row["deleted_at"]) == ("C", 1, None)
        assert await h.run(deleted) == "duplicate"
        assert await h.run(_job(h, v2, customer_id=cid, event_type="customer.custom_attribute.deleted")) == "stale"


async def test_the_schema_wrapped_shape_is_read_as_well(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        assert await h.run(_job(h, custom_attribute(value="Wrapped"), customer_id=cid, wrapped=True)) == "applied"
        row = await _value(db_pool, cid)
        assert row is not None and row["value"] == "Wrapped"
        definition = attribute_definition(name="Wrapped def")
        assert await h.run(_job(h, definition, event_type="customer.custom_attribute_definition.visible.created",
                                wrapped=True)) == "applied"
        assert await db_pool.fetchval("SELECT name FROM square.customer_custom_attribute_definitions") == "Wrapped def"


async def test_a_value_for_an_unknown_customer_is_kept_and_its_customer_fetched(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "Grace"})
        assert await h.run(_job(h, custom_attribute(value="Espresso"), customer_id=rec.id)) == "applied"
        assert h.api_calls == 1  # the customer, not the value
        assert (await _value(db_pool, rec.id)) is not None
        assert await db_pool.fetchval("SELECT given_name FROM square.customers WHERE id = $1", rec.id) == "Grace"
        view = await db_pool.fetchval("SELECT custom_attributes FROM square.customers_current WHERE id = $1", rec.id)
        assert view == {"favorite-drink": "Espresso"}  # no definition known yet: keyed by its key


async def test_owned_events_qualified_with_the_application_id_use_the_simple_key(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url, square_application_id="sq0idp-mine") as h:
        cid = await _known_customer(h)
        attr = custom_attribute(key="sq0idp-mine:tier", value="Gold")
        assert await h.run(_job(h, attr, customer_id=cid, event_type="customer.custom_attribute.owned.updated")) \
            == "applied"
        assert await h.run(_job(h, attr, customer_id=cid)) == "stale"  # its visible twin, mapped by the setting
        other = custom_attribute(key="sq0idp-other:tier", value="Silver")
        assert await h.run(_job(h, other, customer_id=cid)) == "applied"
        keys = await db_pool.fetch("SELECT key FROM square.customer_custom_attributes ORDER BY key")
        assert [r["key"] for r in keys] == ["sq0idp-other:tier", "tier"]


async def test_definition_events_name_values_and_a_deleted_definition_ends_its_values(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        size = attribute_definition(key="size", name="Shirt size", schema=SELECTION)
        assert await h.run(_job(h, size, event_type="customer.custom_attribute_definition.visible.created")) \
            == "applied"
        assert await h.run(_job(h, custom_attribute(key="size", value=["u-large"]), customer_id=cid)) == "applied"
        typed = await db_pool.fetchrow("SELECT data_type, selection_names FROM square.customer_custom_attributes_typed")
        assert typed is not None and (typed["data_type"], typed["selection_names"]) == ("selection", ["Large"])
        current = await db_pool.fetchval("SELECT custom_attributes FROM square.customers_current WHERE id = $1", cid)
        assert current == {"Shirt size": "Large"}
        hidden = {**size, "version": 2, "visibility": "VISIBILITY_READ_WRITE_VALUES"}
        assert await h.run(_job(h, hidden, event_type="customer.custom_attribute_definition.visible.updated")) \
            == "applied"
        row = await _value(db_pool, cid, "size")
        assert row is not None and row["visibility"] == "VISIBILITY_READ_WRITE_VALUES"  # follows its definition
        assert await h.run(_job(h, hidden, event_type="customer.custom_attribute_definition.public.deleted")) \
            == "deleted"
        row = await _value(db_pool, cid, "size")
        assert row is not None and row["deleted_at"] is not None
        assert await db_pool.fetchval("SELECT custom_attributes FROM square.customers_current WHERE id = $1", cid) \
            == {}


async def test_the_inbox_keeps_no_value(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        job = _job(h, custom_attribute(key="email", value="private@example.test"), customer_id=cid)
        assert await h.run(job) == "applied"
        stored = await db_pool.fetchval("SELECT payload FROM square.webhook_events WHERE event_id = $1",
                                        job["event_id"])
        assert "private@" not in str(stored) and "object" not in stored


async def test_a_job_without_its_object_reads_the_values_from_square(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        async with aiohttp.ClientSession() as session:
            api = EmulatorClient(session, h.emu.base_url, h.emu.token, h.merchant_id)
            await api.call("POST", "/v2/customers/custom-attribute-definitions", {"custom_attribute_definition": {
                "key": "drink", "name": "Drink", "schema": attribute_definition()["schema"],
                "visibility": "VISIBILITY_READ_ONLY"}})
            await api.call("POST", f"/v2/customers/{cid}/custom-attributes/drink",
                           {"custom_attribute": {"value": "Cortado"}})
        job = _job(h, custom_attribute(key="drink", value="Cortado"), customer_id=cid)
        job.pop("object")  # as redrive rebuilds it from the inbox
        calls = h.api_calls
        assert await h.run(job) == "applied"
        assert h.api_calls == calls + 1  # one ListCustomerCustomAttributes
        row = await _value(db_pool, cid, "drink")
        assert row is not None and row["value"] == "Cortado"


async def test_without_the_application_id_a_visible_event_finds_the_definition_only_its_owner_sees_simple(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        cid = await _known_customer(h)
        tier = attribute_definition(key="tier", name="Tier")
        assert await h.run(_job(h, tier, event_type="customer.custom_attribute_definition.owned.created")) == "applied"
        qualified = custom_attribute(key="sq0idp-mine:tier", value="Gold")
        assert await h.run(_job(h, qualified, customer_id=cid)) == "applied"
        other = custom_attribute(key="square:5f3c", value="Blue")  # a Dashboard field keeps its qualified key
        assert await h.run(_job(h, other, customer_id=cid)) == "applied"
        keys = await db_pool.fetch("SELECT key FROM square.customer_custom_attributes ORDER BY key")
        assert [r["key"] for r in keys] == ["square:5f3c", "tier"]


KNOB_SIDES = [
    pytest.param({}, id="defaults"),
    pytest.param({"merge_custom_attributes": "drop"}, id="merge drops values"),
    pytest.param({"merge_fires_attribute_events": True, "customer_delete_fires_attribute_events": True,
                  "definition_delete_fires_value_events": True}, id="deletes and merges fire value events"),
    pytest.param({"custom_attribute_event_shape": "wrapped", "owned_event_keys_qualified": False},
                 id="wrapped shape, simple owned keys"),
]


@pytest.mark.parametrize("knobs", KNOB_SIDES)
async def test_merges_and_deletes_leave_squares_values_whatever_square_does_with_them(
    db_pool: asyncpg.Pool, redis_url: str, knobs: dict[str, Any]
) -> None:
    """What Square does with custom attributes on a merge or a delete is not documented: the mirror ends the
    sources' values and reads the target's again, so it equals Square either way (the emulator's switches)."""
    config = EmulatorConfig(knobs=Knobs(**knobs))
    async with harness(db_pool, redis_url, config, square_application_id=config.application_id) as h:
        ids = [h.state.create_customer({"given_name": f"C{n}"})[0].id for n in range(4)]
        own = await h.emu.define_custom_attribute({"key": "tier", "name": "Tier", "schema": STRING_SCHEMA,
                                                   "visibility": "VISIBILITY_READ_ONLY"})
        field = await h.emu.define_custom_attribute({"name": "Usual order", "schema": STRING_SCHEMA}, owner="square")
        gone = await h.emu.define_custom_attribute({"key": "gone", "name": "Gone", "schema": STRING_SCHEMA,
                                                    "visibility": "VISIBILITY_READ_ONLY"})
        for n, cid in enumerate(ids):
            await h.emu.set_custom_attribute(cid, own, f"tier {n}")
            await h.emu.set_custom_attribute(cid, field, f"order {n}")
            await h.emu.set_custom_attribute(cid, gone, f"gone {n}")
        seen = 0

        async def deliver() -> None:
            nonlocal seen
            payloads = h.payloads()
            for payload in payloads[seen:]:
                assert await h.run(payload) != "failed"
            seen = len(payloads)

        await deliver()
        calls = h.api_calls
        await h.emu.set_custom_attribute(ids[0], field, "changed")
        await deliver()
        assert h.api_calls == calls  # a value change costs no Square request
        h.state.merge([ids[0], ids[1]])
        h.state.delete_customer(ids[2], None)
        await h.emu.admin("DELETE", f"custom-attribute-definitions/{gone}?merchant_id={h.merchant_id}")
        await deliver()
        await assert_mirror_matches(db_pool, h.emu)
        assert await db_pool.fetchval("SELECT count(*) FROM square.customer_custom_attributes "
                                      "WHERE key = 'gone' AND deleted_at IS NULL") == 0
