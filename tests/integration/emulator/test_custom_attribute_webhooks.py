"""Custom attribute webhooks (FACTS-2 A.6): `.visible.*` for what the mirror's application sees, `.owned.*` in addition
for what it owns, nothing for other applications' HIDDEN definitions; the deprecated names only to subscriptions that
name them; the UNCONFIRMED knobs on both sides; recorded for SearchEvents like customer events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorConfig, Knobs
from emulator.testing import EmulatorHandle, run_emulator
from tests.integration.emulator.helpers import NUMBER, OTHER_APP, Api, HookReceiver, receiving

APP = "sq0idp-square-mirror"
VALUE_OWNED, VALUE_VISIBLE = "customer.custom_attribute.owned", "customer.custom_attribute.visible"
DEF_OWNED, DEF_VISIBLE = "customer.custom_attribute_definition.owned", "customer.custom_attribute_definition.visible"


@pytest.fixture
async def emu(hook_receiver: HookReceiver) -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=41, knobs=Knobs(events_enabled_by_default=True))) as handle:
        await handle.subscribe(hook_receiver.url, "key")  # no event_types: every non-deprecated type
        yield handle


@pytest.fixture
async def api(emu: EmulatorHandle) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(emu, session)


async def settle(emu: EmulatorHandle, receiver: HookReceiver) -> None:
    """Let every delivery so far arrive, then forget them."""
    assert await emu.drain_webhooks(10)
    receiver.received.clear()


async def attribute_events(emu: EmulatorHandle, receiver: HookReceiver) -> list[dict[str, Any]]:
    assert await emu.drain_webhooks(10)
    return sorted((e for e in receiver.received if e["type"].startswith("customer.custom_attribute")),
                  key=lambda e: e["type"])


async def test_owned_value_upsert_fires_owned_and_visible_updated_with_qualified_keys(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver) -> None:
    await api.define("drink")
    cid = await api.customer()
    await settle(emu, hook_receiver)
    rest = await api.upsert(cid, "drink", "Flat white")
    assert rest["key"] == "drink" and rest["version"] == 1  # REST answers the owner with the simple key
    await api.upsert(cid, "drink", "Oat latte")  # an update fires `updated` too (there is no `created`)
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{VALUE_OWNED}.updated"] * 2 + [f"{VALUE_VISIBLE}.updated"] * 2
    for event in events:
        assert set(event) == {"merchant_id", "type", "event_id", "created_at", "data"}
        assert event["merchant_id"] == emu.merchant_id
        data = event["data"]
        assert data["type"] == "custom_attribute" and data["id"] == f"{APP}:drink:CUSTOMER:{cid}"
        assert "deleted" not in data
        assert data["object"]["key"] == f"{APP}:drink"  # bare shape, qualified key (the examples' way)
        assert data["object"]["visibility"] == "VISIBILITY_READ_WRITE_VALUES"
    assert sorted(e["data"]["object"]["version"] for e in events) == [1, 1, 2, 2]
    assert len({e["event_id"] for e in events}) == 4


async def test_value_delete_fires_deleted_events_carrying_the_last_value(api: Api, emu: EmulatorHandle,
                                                                         hook_receiver: HookReceiver) -> None:
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Flat white")
    await api.upsert(cid, "drink", "Cold brew")
    await settle(emu, hook_receiver)
    assert await api.ok("DELETE", f"/v2/customers/{cid}/custom-attributes/drink") == {}
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{VALUE_OWNED}.deleted", f"{VALUE_VISIBLE}.deleted"]
    for event in events:
        assert event["data"]["deleted"] is True
        assert event["data"]["object"]["value"] == "Cold brew" and event["data"]["object"]["version"] == 2


async def test_another_apps_visible_definition_fires_visible_events_only(api: Api, emu: EmulatorHandle,
                                                                        hook_receiver: HookReceiver) -> None:
    cid = await api.customer()
    qkey = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_WRITE_VALUES")
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/{qkey}", {"value": "12"})
    await api.upsert(cid, qkey, "13")  # READ_WRITE_VALUES: the mirror's app may write it too
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{VALUE_VISIBLE}.updated", f"{VALUE_VISIBLE}.updated",
                                           f"{DEF_VISIBLE}.created"]
    assert events[2]["data"] == {"type": "custom_attribute_definition", "id": qkey,
                                 "object": events[2]["data"]["object"]}
    assert events[2]["data"]["object"]["key"] == qkey
    assert {e["data"]["id"] for e in events[:2]} == {f"{qkey}:CUSTOMER:{cid}"}


async def test_another_apps_hidden_definition_fires_nothing_and_records_nothing(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver) -> None:
    cid = await api.customer()
    qkey = await api.define_as(OTHER_APP, "secret", NUMBER, "VISIBILITY_HIDDEN")
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/{qkey}", {"value": "1"})
    await emu.admin("PUT", f"custom-attribute-definitions/{qkey}", {"definition": {"name": "still hidden"}})
    await emu.admin("DELETE", f"customers/{cid}/custom-attributes/{qkey}")
    await emu.admin("DELETE", f"custom-attribute-definitions/{qkey}")
    assert await attribute_events(emu, hook_receiver) == []
    searched = await api.ok("POST", "/v2/events", {"query": {"filter": {"event_types": [
        f"{VALUE_VISIBLE}.updated", f"{DEF_VISIBLE}.created", f"{DEF_VISIBLE}.deleted"]}}})
    assert searched == {}


async def test_seller_dashboard_field_values_fire_visible_events(api: Api, emu: EmulatorHandle,
                                                                hook_receiver: HookReceiver) -> None:
    cid = await api.customer()
    qkey = await api.define_as("square", None)
    assert qkey.startswith("square:") and len(qkey) == len("square:") + 36
    await api.upsert(cid, qkey, "from the mirror")
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{VALUE_VISIBLE}.updated", f"{DEF_VISIBLE}.created"]
    assert events[1]["data"]["object"]["visibility"] == "VISIBILITY_READ_WRITE_VALUES"


async def test_definition_create_update_delete_fire_owned_and_visible_events(api: Api, emu: EmulatorHandle,
                                                                            hook_receiver: HookReceiver) -> None:
    await api.define("tier", visibility="VISIBILITY_HIDDEN")  # the owner sees its own HIDDEN definitions
    await api.ok("PUT", "/v2/customers/custom-attribute-definitions/tier",
                 {"custom_attribute_definition": {"name": "Tier", "version": 1}})
    await api.ok("DELETE", "/v2/customers/custom-attribute-definitions/tier")
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{DEF_OWNED}.{a}" for a in ("created", "deleted", "updated")] + [
        f"{DEF_VISIBLE}.{a}" for a in ("created", "deleted", "updated")]
    deleted = [e for e in events if e["type"].endswith(".deleted")]
    assert all(e["data"]["deleted"] is True and e["data"]["object"]["version"] == 2 for e in deleted)
    assert all(e["data"]["id"] == f"{APP}:tier" and e["data"]["object"]["key"] == f"{APP}:tier" for e in events)


async def test_other_apps_definition_turning_hidden_fires_one_last_visible_update(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver) -> None:
    qkey = await api.define_as(OTHER_APP, "level", NUMBER, "VISIBILITY_READ_ONLY")
    await emu.admin("PUT", f"custom-attribute-definitions/{qkey}", {"definition": {"visibility": "VISIBILITY_HIDDEN"}})
    await emu.admin("PUT", f"custom-attribute-definitions/{qkey}", {"definition": {"name": "unseen"}})
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{DEF_VISIBLE}.created", f"{DEF_VISIBLE}.updated"]
    assert events[1]["data"]["object"]["visibility"] == "VISIBILITY_HIDDEN"


@pytest.mark.parametrize("shape", ["bare", "wrapped"])
async def test_event_shape_knob_puts_the_object_bare_or_wrapped(api: Api, emu: EmulatorHandle,
                                                                 hook_receiver: HookReceiver, shape: str) -> None:
    await emu.set_faults(custom_attribute_event_shape=shape)
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Matcha")
    events = await attribute_events(emu, hook_receiver)
    for event in events:
        obj = event["data"]["object"]
        kind = event["data"]["type"]
        inner = obj[kind] if shape == "wrapped" else obj
        assert (set(obj) == {kind}) == (shape == "wrapped")
        assert inner["key"] == f"{APP}:drink"


@pytest.mark.parametrize("qualified", [True, False])
async def test_owned_event_keys_knob_qualifies_or_not_the_key_of_owned_events(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver, qualified: bool) -> None:
    await emu.set_faults(owned_event_keys_qualified=qualified)
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Matcha")
    events = await attribute_events(emu, hook_receiver)
    for event in events:
        owned = ".owned." in event["type"]
        want = "drink" if owned and not qualified else f"{APP}:drink"
        assert event["data"]["object"]["key"] == want, event["type"]
        assert event["data"]["id"].startswith(f"{APP}:drink")  # data.id is always qualified


async def test_deprecated_types_go_only_to_subscriptions_that_name_them(api: Api, emu: EmulatorHandle,
                                                                       hook_receiver: HookReceiver) -> None:
    async with receiving() as old:
        await emu.subscribe(old.url, "k", event_types=[
            "customer.custom_attribute.updated", "customer.custom_attribute.public.updated",
            "customer.custom_attribute_definition.created", "customer.custom_attribute_definition.public.created"])
        await api.define("drink")
        cid = await api.customer()
        await api.upsert(cid, "drink", "Chai")
        new_events = await attribute_events(emu, hook_receiver)
    assert old.types() == ["customer.custom_attribute.public.updated", "customer.custom_attribute.updated",
                           "customer.custom_attribute_definition.created",
                           "customer.custom_attribute_definition.public.created"]
    assert not any(e["type"] in old.types() for e in new_events)  # the default subscription: current names only
    by_type = {e["type"]: e for e in new_events}
    replacement = {"customer.custom_attribute.updated": f"{VALUE_OWNED}.updated",
                   "customer.custom_attribute.public.updated": f"{VALUE_VISIBLE}.updated",
                   "customer.custom_attribute_definition.created": f"{DEF_OWNED}.created",
                   "customer.custom_attribute_definition.public.created": f"{DEF_VISIBLE}.created"}
    for event in old.received:  # the same data as its replacement, its own event ID
        current = by_type[replacement[event["type"]]]
        assert event["data"] == current["data"] and event["event_id"] != current["event_id"]
    searched = await api.ok("POST", "/v2/events", {"query": {"filter": {"event_types": old.types()}}})
    assert searched == {}  # deprecated copies are not recorded for SearchEvents


async def test_subscription_event_types_filter_applies_to_attribute_events(api: Api, emu: EmulatorHandle,
                                                                          hook_receiver: HookReceiver) -> None:
    for sub in (await emu.admin("GET", "subscriptions"))["subscriptions"]:
        await emu.admin("DELETE", f"subscriptions/{sub['id']}")
    await emu.subscribe(hook_receiver.url, "key", event_types=[f"{VALUE_VISIBLE}.updated", f"{VALUE_VISIBLE}.deleted"])
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Chai")
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == [f"{VALUE_VISIBLE}.updated"]
    assert hook_receiver.of_type("customer.created") == []


async def test_attribute_changes_never_bump_the_customer_or_fire_customer_updated(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver) -> None:
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Chai")
    await api.ok("DELETE", f"/v2/customers/{cid}/custom-attributes/drink")
    assert await emu.drain_webhooks(10)
    assert hook_receiver.of_type("customer.updated") == []
    assert (await api.ok("GET", f"/v2/customers/{cid}"))["customer"]["version"] == 0


@pytest.mark.parametrize("fire", [False, True])
async def test_definition_delete_removes_values_and_fires_value_events_only_with_the_knob(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver, fire: bool) -> None:
    await emu.set_faults(definition_delete_fires_value_events=fire)
    await api.define("drink")
    ids = [await api.customer(f"C{i}") for i in range(3)]
    for cid in ids:
        await api.upsert(cid, "drink", "Chai")
    await settle(emu, hook_receiver)
    await api.ok("DELETE", "/v2/customers/custom-attribute-definitions/drink")
    events = await attribute_events(emu, hook_receiver)
    expected = [f"{DEF_OWNED}.deleted", f"{DEF_VISIBLE}.deleted"]
    if fire:
        expected += [f"{VALUE_OWNED}.deleted"] * 3 + [f"{VALUE_VISIBLE}.deleted"] * 3
    assert [e["type"] for e in events] == sorted(expected)
    assert (await emu.truth())["custom_attributes"] == {}


@pytest.mark.parametrize("fire", [False, True])
async def test_customer_delete_makes_values_unreachable_and_fires_only_with_the_knob(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver, fire: bool) -> None:
    await emu.set_faults(customer_delete_fires_attribute_events=fire)
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Chai")
    await settle(emu, hook_receiver)
    await api.ok("DELETE", f"/v2/customers/{cid}")
    events = await attribute_events(emu, hook_receiver)
    assert [e["type"] for e in events] == ([f"{VALUE_OWNED}.deleted", f"{VALUE_VISIBLE}.deleted"] if fire else [])
    status, _ = await api.call("GET", f"/v2/customers/{cid}/custom-attributes")
    assert status == 404
    assert cid not in (await emu.truth())["custom_attributes"]


@pytest.mark.parametrize("mode", ["follow", "drop"])
async def test_merge_values_follow_or_drop_and_fire_no_attribute_events_by_default(
        api: Api, emu: EmulatorHandle, hook_receiver: HookReceiver, mode: str) -> None:
    await emu.set_faults(merge_custom_attributes=mode)
    await api.define("drink")
    await api.define("size")
    a, b = await api.customer("A"), await api.customer("B")
    await api.upsert(a, "drink", "Old")
    await api.upsert(a, "size", "M")
    await api.upsert(b, "drink", "Newest")
    await api.ok("PUT", f"/v2/customers/{b}", {"nickname": "b"})  # b is the newest profile: its values win
    await settle(emu, hook_receiver)
    new = (await emu.merge([a, b]))["customer"]["id"]
    assert await attribute_events(emu, hook_receiver) == []
    listed = await api.ok("GET", f"/v2/customers/{new}/custom-attributes")
    values = {c["key"]: c["value"] for c in listed.get("custom_attributes", [])}
    assert values == ({"drink": "Newest", "size": "M"} if mode == "follow" else {})
    truth = await emu.truth()
    assert a not in truth["custom_attributes"] and b not in truth["custom_attributes"]


async def test_merge_fires_attribute_events_with_the_knob(api: Api, emu: EmulatorHandle,
                                                         hook_receiver: HookReceiver) -> None:
    await emu.set_faults(merge_fires_attribute_events=True)
    await api.define("drink")
    a, b = await api.customer("A"), await api.customer("B")
    await api.upsert(a, "drink", "Chai")
    await settle(emu, hook_receiver)
    new = (await emu.merge([a, b]))["customer"]["id"]
    events = await attribute_events(emu, hook_receiver)
    assert [(e["type"], e["data"]["id"].rsplit(":", 1)[-1]) for e in events] == [
        (f"{VALUE_OWNED}.deleted", a), (f"{VALUE_OWNED}.updated", new),
        (f"{VALUE_VISIBLE}.deleted", a), (f"{VALUE_VISIBLE}.updated", new)]


async def test_search_events_returns_attribute_events_under_the_customer_rules(api: Api, emu: EmulatorHandle) -> None:
    await api.define("drink")
    cid = await api.customer()
    await api.upsert(cid, "drink", "Chai")
    body = await api.ok("POST", "/v2/events", {"query": {"filter": {"event_types": [f"{VALUE_VISIBLE}.updated"]}}})
    assert [e["type"] for e in body["events"]] == [f"{VALUE_VISIBLE}.updated"]
    assert body["events"][0]["data"]["id"] == f"{APP}:drink:CUSTOMER:{cid}"
    everything = await api.ok("POST", "/v2/events", {"query": {"sort": {"order": "ASC"}}})
    assert [e["type"] for e in everything["events"]] == [
        f"{DEF_OWNED}.created", f"{DEF_VISIBLE}.created", "customer.created", f"{VALUE_OWNED}.updated",
        f"{VALUE_VISIBLE}.updated"]
    await api.ok("PUT", "/v2/events/disable")
    await api.upsert(cid, "drink", "Matcha")  # occurs while disabled: never searchable
    await api.ok("PUT", "/v2/events/enable")
    again = await api.ok("POST", "/v2/events", {"query": {"filter": {"event_types": [f"{VALUE_VISIBLE}.updated"]}}})
    assert len(again["events"]) == 1
    types = await api.ok("GET", "/v2/events/types")
    assert {f"{VALUE_OWNED}.updated", f"{DEF_VISIBLE}.deleted"} <= set(types["event_types"])
    assert "customer.custom_attribute.updated" not in types["event_types"]
