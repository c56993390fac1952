"""Custom attributes from the mirror's application's perspective (FACTS-2 A.1, A.3): its own definitions by their
simple key, other applications' READ_ONLY / READ_WRITE_VALUES ones and the seller's Dashboard fields by qualified key,
other applications' HIDDEN ones nowhere; who may write what; the admin API; the truth dump; snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from tests.integration.emulator.helpers import NUMBER, OTHER_APP, STRING, Api

APP = "sq0idp-square-mirror"


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=43)) as handle:
        yield handle


@pytest.fixture
async def api(emu: EmulatorHandle) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(emu, session)


async def test_definitions_of_every_owner_as_the_application_sees_them(api: Api, emu: EmulatorHandle) -> None:
    await api.define("drink", visibility="VISIBILITY_HIDDEN")
    read_only = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_ONLY")
    writable = await api.define_as(OTHER_APP, "notes", STRING, "VISIBILITY_READ_WRITE_VALUES")
    hidden = await api.define_as(OTHER_APP, "secret", STRING, "VISIBILITY_HIDDEN")
    seller = await api.define_as("square", None, STRING, "VISIBILITY_HIDDEN")  # Dashboard fields are always RWV
    assert read_only == f"{OTHER_APP}:points" and hidden == f"{OTHER_APP}:secret"
    listed = await api.ok("GET", "/v2/customers/custom-attribute-definitions?limit=100")
    keys = {d["key"]: d["visibility"] for d in listed["custom_attribute_definitions"]}
    assert keys == {"drink": "VISIBILITY_HIDDEN", read_only: "VISIBILITY_READ_ONLY",
                    writable: "VISIBILITY_READ_WRITE_VALUES", seller: "VISIBILITY_READ_WRITE_VALUES"}
    got = await api.ok("GET", f"/v2/customers/custom-attribute-definitions/{read_only}")  # ':' travels literally
    assert got["custom_attribute_definition"]["key"] == read_only
    own = await api.ok("GET", f"/v2/customers/custom-attribute-definitions/{APP}:drink")  # its own, qualified
    assert own["custom_attribute_definition"]["key"] == "drink"
    for key in (hidden, "points", "secret"):
        status, body = await api.call("GET", f"/v2/customers/custom-attribute-definitions/{key}")
        assert status == 404 and body["errors"][0]["code"] == "NOT_FOUND", key
    everything = await emu.admin("GET", "custom-attribute-definitions")
    assert set(everything["custom_attribute_definitions"]) == {f"{APP}:drink", read_only, writable, hidden, seller}


async def test_values_of_other_owners_are_writable_only_when_read_write_values(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    read_only = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_ONLY")
    writable = await api.define_as(OTHER_APP, "notes", STRING, "VISIBILITY_READ_WRITE_VALUES")
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/{read_only}", {"value": "10"})
    status, body = await api.call("POST", f"/v2/customers/{cid}/custom-attributes/{read_only}",
                                  {"custom_attribute": {"value": "11"}})
    assert status == 403 and body["errors"][0]["code"] == "FORBIDDEN"
    status, _ = await api.call("DELETE", f"/v2/customers/{cid}/custom-attributes/{read_only}")
    assert status == 403
    written = await api.upsert(cid, writable, "hello")
    assert written["key"] == writable and written["visibility"] == "VISIBILITY_READ_WRITE_VALUES"
    got = await api.ok("GET", f"/v2/customers/{cid}/custom-attributes/{read_only}?with_definition=true")
    assert got["custom_attribute"]["value"] == "10" and got["custom_attribute"]["definition"]["key"] == read_only
    for path in (f"/v2/customers/custom-attribute-definitions/{writable}",):
        status, _ = await api.call("PUT", path, {"custom_attribute_definition": {"name": "mine now"}})
        assert status == 403
        status, _ = await api.call("DELETE", path)
        assert status == 403


async def test_hidden_definitions_of_other_apps_and_their_values_are_invisible_everywhere(
        api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    await api.define("drink")
    await api.upsert(cid, "drink", "Chai")
    hidden = await api.define_as(OTHER_APP, "secret", STRING, "VISIBILITY_HIDDEN")
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/{hidden}", {"value": "psst"})
    listed = await api.ok("GET", f"/v2/customers/{cid}/custom-attributes?with_definitions=true")
    assert [c["key"] for c in listed["custom_attributes"]] == ["drink"]
    status, _ = await api.call("GET", f"/v2/customers/{cid}/custom-attributes/{hidden}")
    assert status == 404
    status, _ = await api.call("POST", f"/v2/customers/{cid}/custom-attributes/{hidden}",
                               {"custom_attribute": {"value": "x"}})
    assert status == 404
    status, body = await api.call("POST", "/v2/customers/search", {"query": {"filter": {"custom_attribute": {
        "filters": [{"key": hidden, "filter": {"text": {"exact": "psst"}}}]}}}})
    assert status == 400 and body["errors"][0]["code"] == "BAD_REQUEST"
    truth = await emu.truth()
    assert set(truth["custom_attribute_definitions"]) == {"drink"}
    assert set(truth["custom_attributes"][cid]) == {"drink"}


async def test_visibility_of_a_value_follows_its_definition(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    qkey = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_WRITE_VALUES")
    await api.upsert(cid, qkey, "1")
    await emu.admin("PUT", f"custom-attribute-definitions/{qkey}",
                    {"definition": {"visibility": "VISIBILITY_READ_ONLY"}})
    got = await api.ok("GET", f"/v2/customers/{cid}/custom-attributes/{qkey}")
    assert got["custom_attribute"]["visibility"] == "VISIBILITY_READ_ONLY"
    await emu.admin("PUT", f"custom-attribute-definitions/{qkey}", {"definition": {"visibility": "VISIBILITY_HIDDEN"}})
    assert await api.ok("GET", f"/v2/customers/{cid}/custom-attributes") == {}


async def test_admin_value_calls_act_as_the_owner_and_check_versions(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    qkey = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_ONLY")
    first = await emu.admin("PUT", f"customers/{cid}/custom-attributes/{qkey}", {"value": "5"})
    assert first["custom_attribute"]["key"] == qkey and first["custom_attribute"]["version"] == 1
    second = await emu.admin("PUT", f"customers/{cid}/custom-attributes/{qkey}", {"value": "6", "version": 1})
    assert second["custom_attribute"]["version"] == 2
    with pytest.raises(RuntimeError, match="400"):
        await emu.admin("PUT", f"customers/{cid}/custom-attributes/{qkey}", {"value": "7", "version": 1})
    with pytest.raises(RuntimeError, match="INVALID_VALUE"):
        await emu.admin("PUT", f"customers/{cid}/custom-attributes/{qkey}", {"value": "many"})
    own = await emu.admin("POST", "custom-attribute-definitions", {"definition": {"key": "mine", "schema": STRING}})
    assert own["owner"] == APP and own["custom_attribute_definition"]["key"] == f"{APP}:mine"
    assert own["visible_to_application"] is True  # its own, even HIDDEN (the default visibility)
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/mine", {"value": "a simple key is the app's own"})
    assert (await api.ok("GET", f"/v2/customers/{cid}/custom-attributes/mine"))["custom_attribute"]["version"] == 1
    await emu.admin("DELETE", f"customers/{cid}/custom-attributes/{qkey}")
    await emu.admin("DELETE", f"custom-attribute-definitions/{qkey}")
    status, _ = await api.call("GET", f"/v2/customers/custom-attribute-definitions/{qkey}")
    assert status == 404


async def test_public_api_keeps_square_shapes_for_values(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    await api.define("drink")
    status, body = await api.call("POST", "/v2/customers/custom-attribute-definitions", {
        "custom_attribute_definition": {"key": "drink", "schema": STRING}})
    assert status == 409 and body["errors"][0]["code"] == "CONFLICT"
    status, body = await api.call("POST", "/v2/customers/custom-attribute-definitions", {
        "custom_attribute_definition": {"key": "bad:key", "schema": STRING}})
    assert status == 400
    for n in range(25):
        await api.define(f"k{n:02d}")
        await api.upsert(cid, f"k{n:02d}", str(n))
    first = await api.ok("GET", f"/v2/customers/{cid}/custom-attributes")
    assert len(first["custom_attributes"]) == 20 and first["cursor"]  # default page: 20
    rest = await api.ok("GET", f"/v2/customers/{cid}/custom-attributes?cursor={first['cursor']}")
    assert len(rest["custom_attributes"]) == 5 and "cursor" not in rest
    full = await api.ok("GET", f"/v2/customers/{cid}/custom-attributes?limit=100")
    assert len(full["custom_attributes"]) == 25
    status, _ = await api.call("GET", f"/v2/customers/{cid}/custom-attributes/k01?version=2")
    assert status == 400  # a version newer than the current one
    assert (await api.ok("GET", f"/v2/customers/{cid}/custom-attributes/k01?version=1"))["custom_attribute"]
    status, _ = await api.call("GET", "/v2/customers/NOPE/custom-attributes")
    assert status == 404


async def test_truth_dump_shows_what_the_application_sees_of_live_customers(api: Api, emu: EmulatorHandle) -> None:
    a, b = await api.customer("A"), await api.customer("B")
    await api.define("drink")
    other = await api.define_as(OTHER_APP, "points", NUMBER, "VISIBILITY_READ_ONLY")
    seller = await api.define_as("square", None)
    await api.define_as(OTHER_APP, "secret", STRING, "VISIBILITY_HIDDEN")
    await api.upsert(a, "drink", "Chai")
    await emu.admin("PUT", f"customers/{a}/custom-attributes/{other}", {"value": "3"})
    await api.upsert(b, seller, "note")
    await api.ok("DELETE", f"/v2/customers/{b}")
    truth = await emu.truth()
    assert list(truth["custom_attribute_definitions"]) == ["drink", other, seller]
    assert truth["custom_attribute_definitions"][other]["key"] == other
    assert truth["custom_attributes"] == {a: {
        "drink": (await api.ok("GET", f"/v2/customers/{a}/custom-attributes/drink"))["custom_attribute"],
        other: (await api.ok("GET", f"/v2/customers/{a}/custom-attributes/{other}"))["custom_attribute"]}}


async def test_snapshot_restore_keeps_every_owners_definitions_and_values(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    await api.define("drink")
    await api.upsert(cid, "drink", "Chai")
    hidden = await api.define_as(OTHER_APP, "secret", STRING, "VISIBILITY_HIDDEN")
    await emu.admin("PUT", f"customers/{cid}/custom-attributes/{hidden}", {"value": "psst"})
    before = await emu.truth()
    snap = await emu.admin("POST", "snapshot", {})
    await emu.admin("POST", "reset")
    assert (await emu.truth())["custom_attributes"] == {}
    await emu.admin("POST", "restore", snap)
    assert await emu.truth() == before
    internal = await emu.admin("GET", "custom-attribute-definitions")
    assert hidden in internal["custom_attribute_definitions"]
    found = await api.search_ids([{"key": "drink", "filter": {"text": {"exact": "chai"}}}])
    assert found == [cid]  # the index is rebuilt with the values


async def test_the_application_id_is_configurable_and_owns_public_definitions() -> None:
    async with run_emulator(EmulatorConfig(seed=44, application_id="sq0idp-custom-app")) as emu, \
            aiohttp.ClientSession() as session:
        api = Api(emu, session)
        assert (await emu.admin("GET", "application"))["application_id"] == "sq0idp-custom-app"
        await api.define("drink")
        internal = await emu.admin("GET", "custom-attribute-definitions")
        assert list(internal["custom_attribute_definitions"]) == ["sq0idp-custom-app:drink"]
        snap = await emu.admin("POST", "snapshot", {})
        assert snap["application"]["application_id"] == "sq0idp-custom-app"


async def test_handle_helpers_act_as_other_owners(api: Api, emu: EmulatorHandle) -> None:
    cid = await api.customer()
    qkey = await emu.define_custom_attribute({"key": "tier", "schema": STRING, "name": "Tier", "description": "d",
                                              "visibility": "VISIBILITY_READ_ONLY"}, owner=OTHER_APP)
    assert qkey == f"{OTHER_APP}:tier"
    set_ = await emu.set_custom_attribute(cid, qkey, "gold")
    assert set_["custom_attribute"]["version"] == 1
    assert (await emu.set_custom_attribute(cid, qkey, "platinum", version=1))["custom_attribute"]["version"] == 2
    assert (await emu.truth())["custom_attributes"][cid][qkey]["value"] == "platinum"
    await emu.delete_custom_attribute(cid, qkey)
    assert (await emu.truth())["custom_attributes"] == {}
