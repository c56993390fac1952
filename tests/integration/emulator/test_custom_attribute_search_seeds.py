"""SearchCustomers' custom_attribute filter through the lagging index (a value set less than `index_lag_seconds` ago is
not found yet, a deleted one still is), inclusive `updated_at` bounds, keys as the application sees them, paging
through many matches; and seeded custom attributes (every type and owner, the share, determinism)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import emulator.clock
from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, ManualClock, run_emulator
from tests.integration.emulator.helpers import NUMBER, OTHER_APP, Api

APP = "sq0idp-square-mirror"
SEED = {"definitions": 8, "share": 0.3, "min": 1, "max": 5, "hidden": 1}


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=45)) as handle:
        yield handle


@pytest.fixture
async def api(emu: EmulatorHandle) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(emu, session)


async def test_filter_sees_values_only_after_the_index_lag_and_deleted_ones_until_then(
        api: Api, emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    await emu.set_faults(index_lag_seconds=5)
    await api.define("drink")
    cid = await api.customer()
    manual_clock.advance(5)  # the profile itself is listed from now on
    by_value = [{"key": "drink", "filter": {"text": {"exact": "chai"}}}]
    await api.upsert(cid, "drink", "Chai")
    assert await api.search_ids(by_value) == []
    manual_clock.advance(4.9)
    assert await api.search_ids(by_value) == []
    manual_clock.advance(0.1)
    assert await api.search_ids(by_value) == [cid]
    await api.upsert(cid, "drink", "Matcha")  # a change: the old value is what searches see for now
    assert await api.search_ids(by_value) == [cid]
    manual_clock.advance(5)
    assert await api.search_ids(by_value) == []
    await api.ok("DELETE", f"/v2/customers/{cid}/custom-attributes/drink")
    matcha = [{"key": "drink", "filter": {"text": {"exact": "matcha"}}}]
    assert await api.search_ids(matcha) == [cid]  # deleted, still searchable until the lag passes
    manual_clock.advance(5)
    assert await api.search_ids(matcha) == []


async def test_hidden_profiles_never_match_even_with_values(api: Api, emu: EmulatorHandle) -> None:
    await api.define("drink")
    instant = (await emu.admin("POST", "instant-profiles", {}))["customer"]["id"]
    await api.upsert(instant, "drink", "Chai")
    assert await api.search_ids([{"key": "drink", "filter": {"text": {"exact": "chai"}}}]) == []
    assert (await emu.truth())["custom_attributes"][instant]["drink"]["value"] == "Chai"


async def test_updated_at_bounds_are_inclusive(api: Api, emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    await api.define("drink")
    cid = await api.customer()
    stamp = (await api.upsert(cid, "drink", "Chai"))["updated_at"]
    for window in ({"start_at": stamp}, {"end_at": stamp}, {"start_at": stamp, "end_at": stamp}):
        assert await api.search_ids([{"key": "drink", "updated_at": window}]) == [cid], window
    manual_clock.advance(1)
    assert await api.search_ids([{"key": "drink", "updated_at": {"start_at": "2999-01-01T00:00:00Z"}}]) == []


async def test_filter_keys_are_as_the_application_sees_them(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    other = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_ONLY")
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/{other}", {"value": "42"})
    assert await api.search_ids([{"key": other, "filter": {"number": {"start_at": "40", "end_at": "42"}}}]) == [cid]
    status, body = await api.call("POST", "/v2/customers/search", {"query": {"filter": {"custom_attribute": {
        "filters": [{"key": "points", "filter": {"number": {"start_at": "0"}}}]}}}})
    assert status == 400 and body["errors"][0]["code"] == "BAD_REQUEST"  # not the mirror's own key


async def test_selection_filter_takes_display_names(api: Api, emu: EmulatorHandle) -> None:
    options = ["9492bdda-ab4d-4eeb-8496-0986c8f78499", "6b96fba7-d8a5-ae72-48f4-8c3ee875633f"]
    schema = {"items": {"enum": options, "names": ["Small", "Large"]}, "maxItems": 1, "type": "array",
              "uniqueItems": True}
    await api.define("size", schema)
    small, large = await api.customer("S"), await api.customer("L")
    await api.upsert(small, "size", [options[0]])
    await api.upsert(large, "size", [options[1]])
    status, _ = await api.call("POST", f"/v2/customers/{small}/custom-attributes/size",
                               {"custom_attribute": {"value": options}})
    assert status == 400  # more than maxItems
    assert await api.search_ids([{"key": "size", "filter": {"selection": {"any": ["Large"]}}}]) == [large]


async def test_paging_through_many_matches_returns_each_once(api: Api, emu: EmulatorHandle) -> None:
    seeded = await emu.seed(3000, custom_attributes={"definitions": 4, "share": 0.5, "min": 1, "max": 1})
    truth = await emu.truth()
    key = seeded["custom_attributes"]["definitions"][0]
    seen = key.split(":", 1)[1] if key.startswith(f"{APP}:") else key
    holders = {cid for cid, held in truth["custom_attributes"].items() if seen in held}
    assert 200 < len(holders) < 600
    found = await api.search_ids([{"key": seen, "updated_at": {"start_at": "1970-01-01T00:00:00Z"}}], limit=37)
    assert len(found) == len(set(found)) and set(found) == holders


async def test_seeding_makes_every_type_and_owner_with_the_requested_share(api: Api, emu: EmulatorHandle) -> None:
    seeded = await emu.seed(2000, instant_profiles=200, custom_attributes=SEED)
    keys = seeded["custom_attributes"]["definitions"]
    internal = (await emu.admin("GET", "custom-attribute-definitions"))["custom_attribute_definitions"]
    owners = Counter(k.rsplit(":", 1)[0] for k in keys)
    assert owners[APP] == 4 and owners["square"] == 2 and owners["sq0idp-emulator-partner-app"] == 3
    kinds = {(d["schema"].get("$ref") or "Selection").rsplit(".", 1)[-1] for d in internal.values()}
    assert kinds == {"String", "Email", "PhoneNumber", "Number", "Boolean", "Date", "Address", "Selection"}
    selection = next(d for d in internal.values() if d["schema"].get("type") == "array")
    assert len(selection["schema"]["items"]["enum"]) == len(selection["schema"]["items"]["names"])
    hidden = [k for k, d in internal.items() if d["visibility"] == "VISIBILITY_HIDDEN" and not k.startswith(APP)]
    assert len(hidden) == 1
    truth = await emu.truth()
    assert len(truth["custom_attribute_definitions"]) == 8  # the hidden one is not the mirror's to see
    values = truth["custom_attributes"]
    assert 0.25 * 2200 < len(values) < 0.35 * 2200
    assert all(1 <= len(held) <= 5 for held in values.values())
    instants = {cid for cid, c in truth["customers"].items() if c.get("creation_source") == "INSTANT_PROFILE"}
    assert values.keys() & instants  # instant profiles hold values too
    for held in values.values():
        for key, attr in held.items():
            definition = truth["custom_attribute_definitions"][key]
            _check_seeded(definition, attr)
    assert seeded["custom_attributes"]["values"] > sum(len(h) for h in values.values())  # + the hidden ones


def _check_seeded(definition: dict[str, Any], attr: dict[str, Any]) -> None:
    kind = (definition["schema"].get("$ref") or "Selection").rsplit(".", 1)[-1]
    value = attr["value"]
    assert attr["visibility"] == definition["visibility"] and attr["version"] >= 1
    assert attr["created_at"] <= attr["updated_at"]
    if kind == "Number":
        assert isinstance(value, str) and float(value) >= 0
    elif kind == "Boolean":
        assert isinstance(value, bool)
    elif kind == "Date":
        assert len(value) == 10 and value[4] == "-"
    elif kind == "Address":
        assert value["country"] == "US"
    elif kind == "Selection":
        assert set(value) <= set(definition["schema"]["items"]["enum"])
        assert 1 <= len(value) <= definition["schema"]["maxItems"]
    else:
        assert isinstance(value, str)


async def test_seeding_is_deterministic_per_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    dumps = []
    for _ in range(2):
        monkeypatch.setattr(emulator.clock, "now", ManualClock(1_750_000_000.0))  # the same "now" both times
        async with run_emulator(EmulatorConfig(seed=46)) as emu:
            await emu.seed(500, custom_attributes=SEED)
            truth = await emu.truth()
            dumps.append((truth["custom_attribute_definitions"], truth["custom_attributes"]))
    assert dumps[0] == dumps[1]
    assert len(dumps[0][1]) > 100


async def test_seeding_parameters_are_checked(emu: EmulatorHandle) -> None:
    with pytest.raises(RuntimeError, match="400"):
        await emu.seed(10, custom_attributes={"share": 2})
    with pytest.raises(RuntimeError, match="400"):
        await emu.seed(10, custom_attributes={"min": 3, "max": 1})


async def test_start_up_config_seeds_custom_attributes() -> None:
    async with run_emulator(EmulatorConfig(seed=47, customers=50, custom_attributes={"definitions": 3})) as emu:
        truth = await emu.truth()
        assert len(truth["custom_attribute_definitions"]) == 3 and truth["custom_attributes"]
