"""Profiles without public information (instant profiles, or profiles whose five public fields were cleared):
never returned by ListCustomers or SearchCustomers, whatever the filter, nor counted; RetrieveCustomer and
BulkRetrieveCustomers return them with their group_ids and segment_ids. Seeds/003: "this type of instant
profile isn't returned in a ListCustomers or SearchCustomers response ... if you have the customer ID, you can
use it to call RetrieveCustomer, UpdateCustomer, DeleteCustomer, BulkRetrieveCustomers ..."."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorConfig, Knobs
from emulator.testing import EmulatorHandle, run_emulator

PUBLIC = ("given_name", "family_name", "company_name", "email_address", "phone_number")
STRING_SCHEMA = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}


class Api:
    def __init__(self, emu: EmulatorHandle, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session

    async def call(self, method: str, path: str, json: Any = None, *, clear_null: bool = False,
                   expect: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {self.emu.token}"}
        if clear_null:
            headers["X-Clear-Null"] = "true"
        async with self.session.request(method, self.emu.base_url + path, json=json, headers=headers) as r:
            body = await r.json(content_type=None)
            assert r.status == expect, (method, path, r.status, body)
            return body

    async def list_ids(self, **params: str) -> tuple[list[str], int]:
        """Every page of ListCustomers with count=true: (ids, count)."""
        ids: list[str] = []
        query = {"limit": "3", "count": "true", **params}
        count = -1
        while True:
            body = await self.call("GET", "/v2/customers?" + "&".join(f"{k}={v}" for k, v in query.items()))
            ids += [c["id"] for c in body.get("customers", [])]
            count = body["count"]
            if not body.get("cursor"):
                return ids, count
            query["cursor"] = body["cursor"]

    async def search_ids(self, flt: dict[str, Any] | None, sort: dict[str, str] | None = None) -> tuple[list[str], int]:
        """Every page of SearchCustomers with count=true: (ids, count)."""
        ids: list[str] = []
        body: dict[str, Any] = {"limit": 2, "count": True, "query": {}}
        if flt is not None:
            body["query"]["filter"] = flt
        if sort is not None:
            body["query"]["sort"] = sort
        while True:
            page = await self.call("POST", "/v2/customers/search", body)
            ids += [c["id"] for c in page.get("customers", [])]
            count = page["count"]
            if not page.get("cursor"):
                return ids, count
            body["cursor"] = page["cursor"]

    async def retrieve(self, cid: str) -> dict[str, Any]:
        customer: dict[str, Any] = (await self.call("GET", f"/v2/customers/{cid}"))["customer"]
        return customer


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=41)) as handle:
        yield handle


@pytest.fixture
async def api(emu: EmulatorHandle) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(emu, session)


@dataclass
class World:
    group: str
    other_group: str
    segment: str
    other_segment: str
    visible: str
    hidden: str


@pytest.fixture
async def world(emu: EmulatorHandle, api: Api) -> World:
    """A visible and a hidden profile that match every filter below equally (same group, segment, reference
    prefix, custom attribute, time windows), so only visibility can tell them apart."""
    group = (await api.call("POST", "/v2/customers/groups", {"group": {"name": "VIP"}}))["group"]["id"]
    other = (await api.call("POST", "/v2/customers/groups", {"group": {"name": "Other"}}))["group"]["id"]
    segment = (await emu.admin("POST", "segments", {"name": "Loyal"}))["segment"]["id"]
    other_segment = (await emu.admin("POST", "segments", {"name": "Churn risk"}))["segment"]["id"]
    await api.call("POST", "/v2/customers/custom-attribute-definitions", {"custom_attribute_definition": {
        "key": "drink", "schema": STRING_SCHEMA, "name": "Drink"}})
    visible = (await api.call("POST", "/v2/customers", {"given_name": "Vis", "reference_id": "REF_V"}))["customer"]
    hidden = (await emu.admin("POST", "instant-profiles", {}))["customer"]
    assert hidden["creation_source"] == "INSTANT_PROFILE" and not any(hidden.get(f) for f in PUBLIC)
    for cid in (visible["id"], hidden["id"]):
        assert await api.call("PUT", f"/v2/customers/{cid}/groups/{group}") == {}  # public AddGroupToCustomer
        await emu.admin("PUT", f"segments/{segment}/members/{cid}")
        await api.call("POST", f"/v2/customers/{cid}/custom-attributes/drink",
                       {"custom_attribute": {"value": "Flat white"}})
    # Non-public fields may be set on a hidden profile (UpdateCustomer works by ID); it stays hidden.
    updated = (await api.call("PUT", f"/v2/customers/{hidden['id']}", {"reference_id": "REF_H", "note": "n",
                                                                       "nickname": "nick"}))["customer"]
    assert updated["version"] == 2 and updated["group_ids"] == [group]  # group add bumped it once
    return World(group, other, segment, other_segment, visible["id"], hidden["id"])


async def test_hidden_profile_never_listed_or_counted(api: Api, world: World) -> None:
    for sort_field in ("DEFAULT", "CREATED_AT"):
        for order in ("ASC", "DESC"):
            assert await api.list_ids(sort_field=sort_field, sort_order=order) == ([world.visible], 1)


EVER = {"start_at": "2000-01-01T00:00:00Z"}
# Each filter matches the hidden profile as much as the visible one: only visibility keeps it out.
FILTERS: dict[str, Callable[[World], dict[str, Any] | None]] = {
    "no query": lambda w: None,
    "empty filter": lambda w: {},
    "creation_source INSTANT_PROFILE": lambda w: {"creation_source": {"values": ["INSTANT_PROFILE"]}},
    "creation_source exclude THIRD_PARTY": lambda w: {"creation_source": {"values": ["THIRD_PARTY"],
                                                                          "rule": "EXCLUDE"}},
    "created_at": lambda w: {"created_at": EVER},
    "updated_at": lambda w: {"updated_at": {**EVER, "end_at": "2999-01-01T00:00:00Z"}},
    "reference_id exact": lambda w: {"reference_id": {"exact": "REF_H"}},
    "reference_id fuzzy": lambda w: {"reference_id": {"fuzzy": "REF"}},
    "group_ids any": lambda w: {"group_ids": {"any": [w.group]}},
    "group_ids all": lambda w: {"group_ids": {"all": [w.group]}},
    "group_ids none": lambda w: {"group_ids": {"none": [w.other_group]}},
    "segment_ids any": lambda w: {"segment_ids": {"any": [w.segment]}},
    "segment_ids all+none": lambda w: {"segment_ids": {"all": [w.segment], "none": [w.other_segment]}},
    "groups+segments+created_at": lambda w: {"group_ids": {"any": [w.group]}, "segment_ids": {"any": [w.segment]},
                                             "created_at": EVER},
    "custom_attribute value": lambda w: {"custom_attribute": {"filters": [
        {"key": "drink", "filter": {"text": {"exact": "Flat white"}}}]}},
    "custom_attribute updated_at": lambda w: {"custom_attribute": {"filters": [{"key": "drink", "updated_at": EVER}]}},
}
# Filters the visible profile does not match either: the answer is empty.
MATCH_NOTHING = {"creation_source INSTANT_PROFILE", "creation_source exclude THIRD_PARTY", "reference_id exact"}


@pytest.mark.parametrize("name", list(FILTERS))
async def test_hidden_profile_absent_from_search_whatever_the_filter(api: Api, world: World, name: str) -> None:
    flt = FILTERS[name](world)
    want = [] if name in MATCH_NOTHING else [world.visible]
    for sort in (None, {"field": "CREATED_AT", "order": "DESC"}, {"field": "DEFAULT", "order": "ASC"}):
        assert await api.search_ids(flt, sort) == (want, len(want))


async def test_hidden_profile_retrieved_with_groups_and_segments(api: Api, world: World) -> None:
    hidden = await api.retrieve(world.hidden)
    assert hidden["group_ids"] == [world.group] and hidden["segment_ids"] == [world.segment]
    assert hidden["reference_id"] == "REF_H" and not any(hidden.get(f) for f in PUBLIC)
    bulk = await api.call("POST", "/v2/customers/bulk-retrieve", {"customer_ids": [world.hidden, world.visible]})
    assert bulk["responses"][world.hidden]["customer"] == hidden
    assert bulk["responses"][world.visible]["customer"]["segment_ids"] == [world.segment]


async def test_group_and_segment_deletion_with_hidden_members(emu: EmulatorHandle, api: Api, world: World) -> None:
    before = await api.retrieve(world.hidden)
    await api.call("DELETE", f"/v2/customers/groups/{world.group}")
    await emu.admin("DELETE", f"segments/{world.segment}")
    after = await api.retrieve(world.hidden)
    assert "group_ids" not in after and "segment_ids" not in after
    assert after["version"] == before["version"]  # silent, as for visible members (default knobs)
    truth = await emu.truth()
    assert world.group not in truth["group_members"] and world.segment not in truth["segment_members"]
    assert await api.list_ids() == ([world.visible], 1)


async def test_delete_hidden_profiles(emu: EmulatorHandle, api: Api, world: World) -> None:
    other = (await emu.admin("POST", "instant-profiles", {}))["customer"]["id"]
    await emu.admin("PUT", f"segments/{world.segment}/members/{other}")
    assert await api.call("DELETE", f"/v2/customers/{world.hidden}") == {}
    bulk = await api.call("POST", "/v2/customers/bulk-delete", {"customer_ids": [other]})
    assert bulk["responses"][other] == {}
    for cid in (world.hidden, other):
        await api.call("GET", f"/v2/customers/{cid}", expect=404)
    truth = await emu.truth()
    assert {world.hidden, other} <= set(truth["tombstones"])
    assert truth["group_members"][world.group] == [world.visible]
    assert truth["segment_members"][world.segment] == [world.visible]
    assert await api.list_ids() == ([world.visible], 1)


async def test_merge_of_hidden_profiles_is_hidden_unless_a_source_has_public_info(
        emu: EmulatorHandle, api: Api, world: World) -> None:
    second = (await emu.admin("POST", "instant-profiles", {}))["customer"]["id"]
    await api.call("PUT", f"/v2/customers/{second}/groups/{world.other_group}")
    merged = (await emu.merge([world.hidden, second]))["customer"]
    assert merged["creation_source"] == "MERGE" and not any(merged.get(f) for f in PUBLIC)
    assert sorted(merged["group_ids"]) == sorted([world.group, world.other_group])
    assert merged["segment_ids"] == [world.segment]
    assert (await api.retrieve(world.hidden))["id"] == merged["id"]  # merge redirect
    assert await api.list_ids() == ([world.visible], 1)
    assert await api.search_ids({"group_ids": {"any": [world.other_group]}}) == ([], 0)
    # Merging the hidden result with a visible profile gives a visible profile with every membership.
    shown = (await emu.merge([merged["id"], world.visible]))["customer"]
    assert shown["given_name"] == "Vis" and sorted(shown["group_ids"]) == sorted([world.group, world.other_group])
    assert await api.list_ids() == ([shown["id"]], 1)
    assert await api.search_ids({"group_ids": {"all": [world.group, world.other_group]}}) == ([shown["id"]], 1)


# ---- hiding and revealing by update ---------------------------------------------------------------------------


async def test_update_clearing_every_public_field_hides_and_setting_one_reveals(emu: EmulatorHandle,
                                                                               api: Api) -> None:
    c = (await api.call("POST", "/v2/customers", {"given_name": "Gone", "family_name": "Soon",
                                                  "email_address": "gone@example.com", "phone_number": "+14155550100",
                                                  "company_name": "Acme"}))["customer"]
    group = (await api.call("POST", "/v2/customers/groups", {"group": {"name": "G"}}))["group"]["id"]
    await api.call("PUT", f"/v2/customers/{c['id']}/groups/{group}")
    # Empty strings always clear; null clears with X-Clear-Null (UNCONFIRMED knob require_clear_null_header).
    await api.call("PUT", f"/v2/customers/{c['id']}", {"given_name": "", "family_name": "", "company_name": ""})
    assert await api.list_ids() == ([c["id"]], 1)
    hidden = (await api.call("PUT", f"/v2/customers/{c['id']}", {"email_address": None, "phone_number": None},
                             clear_null=True))["customer"]
    assert not any(hidden.get(f) for f in PUBLIC) and hidden["group_ids"] == [group]
    assert await api.list_ids() == ([], 0)
    assert await api.search_ids({"group_ids": {"any": [group]}}) == ([], 0)
    assert (await api.retrieve(c["id"]))["group_ids"] == [group]
    await api.call("PUT", f"/v2/customers/{c['id']}", {"company_name": "Back Again"})
    assert await api.list_ids() == ([c["id"]], 1)
    assert await api.search_ids({"group_ids": {"any": [group]}}) == ([c["id"]], 1)


async def test_dashboard_edit_hides_and_reveals_after_index_lag(emu: EmulatorHandle, api: Api) -> None:
    c = (await api.call("POST", "/v2/customers", {"given_name": "Dash", "email_address": "d@example.com"}))
    cid = c["customer"]["id"]
    await emu.set_faults(index_lag_seconds=0.3)
    edited = (await emu.admin("PATCH", f"customers/{cid}", {"given_name": None, "email_address": None}))["customer"]
    assert not any(edited.get(f) for f in PUBLIC) and edited["version"] == 1
    assert await api.list_ids() == ([cid], 1)  # the index lags behind the truth
    await asyncio.sleep(0.4)
    assert await api.list_ids() == ([], 0)
    await emu.admin("PATCH", f"customers/{cid}", {"phone_number": "+14155550111"})
    assert await api.list_ids() == ([], 0)
    await asyncio.sleep(0.4)
    assert await api.list_ids() == ([cid], 1)
    assert await api.search_ids({"phone_number": {"exact": "+14155550111"}}) == ([cid], 1)


async def test_knob_update_can_hide_profile_off_refuses_public_updates_only() -> None:
    async with run_emulator(EmulatorConfig(seed=42, knobs=Knobs(update_can_hide_profile=False))) as emu, \
            aiohttp.ClientSession() as session:
        api = Api(emu, session)
        c = (await api.call("POST", "/v2/customers", {"given_name": "Keep", "note": "x"}))["customer"]
        err = await api.call("PUT", f"/v2/customers/{c['id']}", {"given_name": ""}, expect=400)
        assert err["errors"][0]["code"] == "BAD_REQUEST"
        bulk = await api.call("POST", "/v2/customers/bulk-update", {"customers": {c["id"]: {"given_name": None}}},
                              clear_null=True)
        assert bulk["responses"][c["id"]]["errors"][0]["code"] == "BAD_REQUEST"
        assert (await api.retrieve(c["id"]))["version"] == 0  # nothing committed
        # Replacing the last public field by another is fine.
        await api.call("PUT", f"/v2/customers/{c['id']}", {"given_name": "", "email_address": "k@example.com"})
        # The Dashboard edit may always hide; a hidden profile can still be updated through the API.
        await emu.admin("PATCH", f"customers/{c['id']}", {"email_address": None})
        assert await api.list_ids() == ([], 0)
        updated = (await api.call("PUT", f"/v2/customers/{c['id']}", {"note": "still hidden"}))["customer"]
        assert updated["note"] == "still hidden"
        instant = (await emu.admin("POST", "instant-profiles", {}))["customer"]
        await api.call("PUT", f"/v2/customers/{instant['id']}", {"nickname": "ok"})
        assert await api.list_ids() == ([], 0)


# ---- seeding ----------------------------------------------------------------------------------------------------


def _instant(truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cid: c for cid, c in truth["customers"].items() if not any(c.get(f) for f in PUBLIC)}


async def test_seeded_instant_profiles_are_in_groups_and_segments_and_never_listed(api: Api,
                                                                                   emu: EmulatorHandle) -> None:
    out = await emu.seed(40, instant_profiles=30, groups=2, segments=2, seed=5)
    truth = await emu.truth()
    instant = _instant(truth)
    assert len(instant) == 30 and all(c["creation_source"] == "INSTANT_PROFILE" for c in instant.values())
    grouped = {cid for cid, c in instant.items() if c.get("group_ids")}
    segmented = {cid for cid, c in instant.items() if c.get("segment_ids")}
    assert grouped and segmented and grouped != set(instant)
    for cid in grouped:
        for gid in instant[cid]["group_ids"]:
            assert cid in truth["group_members"][gid]
    for cid in segmented:
        for sid in instant[cid]["segment_ids"]:
            assert cid in truth["segment_members"][sid]
    sample = sorted(grouped & segmented or grouped)[0]
    got = await api.retrieve(sample)
    assert got["group_ids"] == instant[sample]["group_ids"]
    listed, count = await api.list_ids(limit="100")
    assert count == 40 and not set(listed) & set(instant)
    for gid in out["groups"]:
        ids, n = await api.search_ids({"group_ids": {"any": [gid]}})
        assert not set(ids) & set(instant) and n == len(set(truth["group_members"][gid]) - set(instant))
    for sid in out["segments"]:
        ids, n = await api.search_ids({"segment_ids": {"any": [sid]}})
        assert not set(ids) & set(instant) and n == len(set(truth["segment_members"][sid]) - set(instant))
    # A snapshot keeps them hidden.
    snap = await emu.admin("POST", "snapshot", {})
    await emu.admin("POST", "reset")
    await emu.admin("POST", "restore", snap)
    assert await api.list_ids(limit="100") == (listed, 40)


async def test_seeding_instant_profiles_is_deterministic_per_seed() -> None:
    async def memberships(seed: int) -> dict[str, Any]:
        async with run_emulator(EmulatorConfig(seed=seed, customers=20, instant_profiles=15)) as emu:
            truth = await emu.truth()
            return {cid: (c.get("group_ids"), c.get("segment_ids")) for cid, c in _instant(truth).items()}

    first = await memberships(7)
    assert len(first) == 15 and any(g or s for g, s in first.values())
    assert await memberships(7) == first
    assert await memberships(8) != first
