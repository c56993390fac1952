"""SearchCustomers: every example of the seeds, reproduced through the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, ManualClock, run_emulator

PEOPLE = [
    {"given_name": "Steven", "family_name": "Johnson", "email_address": "steven.johnson@gmail.com",
     "phone_number": "+1-415-212-1200", "reference_id": "NYC_M_35_JOHNSON"},
    {"given_name": "Steve", "family_name": "Smith", "email_address": "steven_smith@GMAIL.com",
     "phone_number": "+1-212-415-1234", "reference_id": "NYC_27_MURRAY"},
    {"given_name": "Amy", "family_name": "Lee", "email_address": "amy@yahoo.com",
     "phone_number": "+1 (551) 234-1567", "reference_id": "SF_M_2"},
    {"given_name": "Bo", "family_name": "Chen", "email_address": "bo@example.com",
     "phone_number": "+1-212-555-0199", "reference_id": "NYC_27_SMITH"},
]


@pytest.fixture
async def setup() -> AsyncIterator[tuple[EmulatorHandle, aiohttp.ClientSession, dict[str, str]]]:
    async with run_emulator(EmulatorConfig(seed=11)) as emu, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {emu.token}"}) as session:
        ids = {}
        for p in PEOPLE:
            async with session.post(emu.base_url + "/v2/customers", json=p) as r:
                ids[p["given_name"]] = (await r.json())["customer"]["id"]
        yield emu, session, ids


async def search(setup: Any, body: dict[str, Any]) -> tuple[int, Any]:
    emu, session, _ = setup
    async with session.post(emu.base_url + "/v2/customers/search", json=body) as r:
        return r.status, await r.json()


def names(body: dict[str, Any]) -> set[str]:
    return {c["given_name"] for c in body.get("customers", [])}


async def test_fuzzy_email_steven_gmail(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"email_address": {"fuzzy": "Steven gmail"}}}})
    assert names(body) == {"Steven", "Steve"}


async def test_exact_email_is_case_insensitive(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"email_address": {"exact": "STEVEN_SMITH@gmail.com"}}}})
    assert names(body) == {"Steve"}


async def test_fuzzy_phone_415_and_415_123(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"phone_number": {"fuzzy": "415"}}}})
    assert names(body) == {"Steven", "Steve", "Amy"}
    _, body = await search(setup, {"query": {"filter": {"phone_number": {"fuzzy": "415 123"}}}})
    assert names(body) == {"Steve", "Amy"}


async def test_exact_phone_accepts_e164_variation(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"phone_number": {"exact": "+1 (415) 212-1200"}}}})
    assert names(body) == {"Steven"}


async def test_fuzzy_reference_nyc_m(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"reference_id": {"fuzzy": "NYC M"}}}})
    assert names(body) == {"Steven", "Steve"}
    _, body = await search(setup, {"query": {"filter": {"reference_id": {"exact": "nyc_27_murray"}}}})
    assert names(body) == {"Steve"}


async def test_segment_filter_all_and_none(setup: Any) -> None:
    emu, _, ids = setup
    seg = {n: (await emu.admin("POST", "segments", {"name": n}))["segment"]["id"] for n in ("A", "B", "C")}
    for who, segs in (("Steven", "AB"), ("Steve", "ABC"), ("Amy", "A")):
        for s in segs:
            await emu.admin("PUT", f"segments/{seg[s]}/members/{ids[who]}")
    _, body = await search(setup, {"query": {"filter": {"segment_ids": {"all": [seg["A"], seg["B"]],
                                                                        "none": [seg["C"]]}}}})
    assert names(body) == {"Steven"}
    status, body = await search(setup, {"query": {"filter": {"segment_ids": {"any": ["gv2:NOPE"]}}}})
    assert status == 400 and body["errors"][0]["code"] == "BAD_REQUEST" and "gv2:NOPE" in body["errors"][0]["detail"]
    status, body = await search(setup, {"query": {"filter": {"segment_ids": {"all": list(seg.values()),
                                                                             "none": ["x"]}}}})
    assert status == 400


async def test_group_filter_any_all_none_and_unknown_group_is_empty_object(setup: Any) -> None:
    emu, session, ids = setup
    gid = {}
    for n in ("G1", "G2"):
        async with session.post(emu.base_url + "/v2/customers/groups", json={"group": {"name": n}}) as r:
            gid[n] = (await r.json())["group"]["id"]
    for who, gs in (("Steven", ("G1", "G2")), ("Steve", ("G1",))):
        for g in gs:
            await session.put(f"{emu.base_url}/v2/customers/{ids[who]}/groups/{gid[g]}")
    _, body = await search(setup, {"query": {"filter": {"group_ids": {"all": [gid["G1"], gid["G2"]]}}}})
    assert names(body) == {"Steven"}
    _, body = await search(setup, {"query": {"filter": {"group_ids": {"any": [gid["G1"]], "none": [gid["G2"]]}}}})
    assert names(body) == {"Steve"}
    status, body = await search(setup, {"query": {"filter": {"group_ids": {"any": ["UNKNOWN"]}}}})
    assert status == 200 and body == {}


async def test_creation_source_exclude_and_sort_paging_with_cursor_tied_to_query(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"creation_source": {"values": ["THIRD_PARTY"],
                                                                           "rule": "EXCLUDE"}}}})
    assert body == {}
    q = {"query": {"sort": {"field": "CREATED_AT", "order": "DESC"}}, "limit": 3, "count": True}
    _, first = await search(setup, q)
    assert [c["given_name"] for c in first["customers"]] == ["Bo", "Amy", "Steve"] and first["count"] == 4
    _, second = await search(setup, {**q, "cursor": first["cursor"]})
    assert [c["given_name"] for c in second["customers"]] == ["Steven"] and "cursor" not in second
    status, body = await search(setup, {"limit": 3, "cursor": first["cursor"]})
    assert status == 400 and body["errors"][0]["code"] == "INVALID_CURSOR"


async def test_created_at_range_and_unknown_filter_field(setup: Any) -> None:
    _, body = await search(setup, {"query": {"filter": {"created_at": {"start_at": "2000-01-01T00:00:00Z"},
                                                        "updated_at": {"end_at": "2000-01-01T00:00:00Z"}}}})
    assert body == {}
    status, body = await search(setup, {"query": {"filter": {"name": "x"}}})
    assert status == 400 and body["errors"][0]["field"] == "name"
    status, body = await search(setup, {"limit": 101})
    assert body["errors"][0]["code"] == "VALUE_TOO_HIGH"


async def test_index_lag_hides_new_profiles_until_it_passes(setup: Any, manual_clock: ManualClock) -> None:
    emu, session, _ = setup
    await emu.set_faults(index_lag_seconds=30)
    async with session.post(emu.base_url + "/v2/customers",
                            json={"given_name": "Late", "email_address": "late@example.com"}) as r:
        cid = (await r.json())["customer"]["id"]
    late = {"query": {"filter": {"email_address": {"fuzzy": "late"}}}}

    async def listed() -> tuple[bool, bool]:
        _, body = await search(setup, {})
        _, found = await search(setup, late)
        return cid in {c["id"] for c in body.get("customers", [])}, cid in {c["id"] for c in found.get("customers", [])}

    assert await listed() == (False, False)
    async with session.get(f"{emu.base_url}/v2/customers/{cid}") as r:
        assert r.status == 200  # retrievable at once: only list and search lag
    manual_clock.advance(29.9)
    assert await listed() == (False, False)
    manual_clock.advance(0.2)
    assert await listed() == (True, True)


async def test_creation_source_filter_rejects_unknown_enum_values(setup: Any) -> None:
    status, body = await search(setup, {"query": {"filter": {"creation_source": {"values": ["NOPE"]}}}})
    assert status == 400 and body["errors"][0]["code"] == "INVALID_ENUM_VALUE"
    _, body = await search(setup, {"query": {"filter": {"creation_source": {"values": ["THIRD_PARTY"]}}}})
    assert len(body["customers"]) == 4
