"""Events API as Square has it: events are disabled by default, only events that occur while enabled are
ever searchable, the application's personal access token serves the Events API only (for every seller), and
OAuth tokens are refused by it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorConfig, Knobs
from emulator.testing import EmulatorHandle, run_emulator

APP = "app-personal-token"
SELLERS = {"MA": "tok-a", "MB": "tok-b", "MO": "tok-o"}


async def call(emu: EmulatorHandle, method: str, path: str, token: str | None = None,
               json: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(
            method, emu.base_url + path, json=json,
            headers={"Authorization": f"Bearer {token or emu.token}"}) as r:
        return r.status, await r.json(content_type=None)


async def search(emu: EmulatorHandle, token: str | None = None, **body: Any) -> dict[str, Any]:
    status, out = await call(emu, "POST", "/v2/events", token, body)
    assert status == 200, out
    result: dict[str, Any] = out
    return result


async def search_all(emu: EmulatorHandle, token: str | None = None, limit: int = 100,
                     query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every page of a SearchEvents query, following cursors."""
    events: list[dict[str, Any]] = []
    body: dict[str, Any] = {"limit": limit, "query": query or {}}
    while True:
        page = await search(emu, token, **body)
        events += page.get("events", [])
        if not page.get("cursor"):
            return events
        body["cursor"] = page["cursor"]


async def create(emu: EmulatorHandle, token: str | None = None, name: str = "E") -> dict[str, Any]:
    status, body = await call(emu, "POST", "/v2/customers", token, {"given_name": name})
    assert status == 200, body
    customer: dict[str, Any] = body["customer"]
    return customer


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=31)) as handle:
        yield handle


@pytest.fixture
async def multi() -> AsyncIterator[EmulatorHandle]:
    """Three sellers (MO holds an OAuth token) and the application's personal access token."""
    cfg = EmulatorConfig(seed=32, sellers=dict(SELLERS), token_kinds={"MO": "oauth"}, application_token=APP)
    async with run_emulator(cfg) as handle:
        yield handle


# ---- enablement -------------------------------------------------------------------------------------------


async def test_events_are_disabled_by_default_and_a_disabled_period_stays_unsearchable(emu: EmulatorHandle) -> None:
    assert (await emu.truth())["events_api"] == {"enabled": False, "enabled_since": None, "changes": [],
                                                 "recorded": 0, "searchable": 0}
    before = await create(emu, name="Before")
    assert await search(emu) == {}  # recorded, never searchable: it happened before EnableEvents
    assert await call(emu, "PUT", "/v2/events/enable") == (200, {})
    await call(emu, "PUT", f"/v2/customers/{before['id']}", json={"nickname": "enabled"})
    assert await call(emu, "PUT", "/v2/events/disable") == (200, {})
    await call(emu, "PUT", f"/v2/customers/{before['id']}", json={"nickname": "disabled"})
    got = await search_all(emu)  # while disabled: what occurred while enabled stays searchable, nothing else
    assert [(e["type"], e["data"]["object"]["customer"].get("nickname")) for e in got] == [
        ("customer.updated", "enabled")]
    await call(emu, "PUT", "/v2/events/enable")
    after = await create(emu, name="After")
    got = await search_all(emu, query={"sort": {"order": "ASC"}})
    assert [(e["type"], e["data"]["id"]) for e in got] == [("customer.updated", before["id"]),
                                                           ("customer.created", after["id"])]
    assert got[0]["data"]["object"]["customer"]["nickname"] == "enabled"  # not the disabled-period update
    state = (await emu.truth())["events_api"]
    assert state["enabled"] is True and state["enabled_since"] == state["changes"][-1]["at"]
    assert [(c["enabled"], c["by"]) for c in state["changes"]] == [(True, "seller"), (False, "seller"),
                                                                   (True, "seller")]
    assert (state["recorded"], state["searchable"]) == (4, 2)


async def test_enable_twice_keeps_the_enabled_since_time(emu: EmulatorHandle) -> None:
    await call(emu, "PUT", "/v2/events/enable")
    first = (await emu.truth())["events_api"]["enabled_since"]
    await call(emu, "PUT", "/v2/events/enable")
    state = (await emu.truth())["events_api"]
    assert state["enabled_since"] == first and len(state["changes"]) == 2


async def test_knob_events_enabled_by_default_makes_events_searchable_from_the_start() -> None:
    async with run_emulator(EmulatorConfig(seed=33, knobs=Knobs(events_enabled_by_default=True))) as emu:
        c = await create(emu)
        got = await search(emu)
        assert [e["data"]["id"] for e in got["events"]] == [c["id"]]
        state = (await emu.truth())["events_api"]
        assert state["enabled"] is True and [ch["by"] for ch in state["changes"]] == ["default"]
        # Switched at runtime, the knob moves every seller never switched by EnableEvents/DisableEvents.
        await emu.admin("POST", "sellers", {"merchant_id": "MLPAT", "token": "pat"})
        await call(emu, "PUT", "/v2/events/enable", "pat")
        await emu.set_faults(events_enabled_by_default=False)
        assert (await emu.truth())["events_api"]["enabled"] is False
        assert (await emu.truth("MLPAT"))["events_api"]["enabled"] is True
        await create(emu)
        assert len((await search(emu))["events"]) == 1  # the first event only
        await emu.admin("POST", "sellers", {"merchant_id": "MLLATE", "token": "late"})
        assert (await emu.truth("MLLATE"))["events_api"]["enabled"] is False
        await emu.set_faults(events_enabled_by_default=True)
        assert (await emu.truth("MLLATE"))["events_api"]["changes"] == [
            {"enabled": True, "at": (await emu.truth("MLLATE"))["events_api"]["enabled_since"], "by": "default"}]


async def test_switching_the_knob_on_at_runtime_makes_later_events_searchable(emu: EmulatorHandle) -> None:
    before = await create(emu, name="Before")
    await emu.set_faults(events_enabled_by_default=True)
    after = await create(emu, name="After")
    got = await search_all(emu)
    assert [e["data"]["id"] for e in got] == [after["id"]] and before["id"] != after["id"]


async def test_snapshot_restore_keeps_each_events_searchable_flag(emu: EmulatorHandle) -> None:
    await create(emu, name="Hidden1")
    await call(emu, "PUT", "/v2/events/enable")
    shown = await create(emu, name="Shown")
    await call(emu, "PUT", "/v2/events/disable")
    await create(emu, name="Hidden2")
    snap = await emu.admin("POST", "snapshot", {})
    truth = await emu.truth()
    await emu.admin("POST", "reset")
    assert (await emu.truth())["events_api"]["recorded"] == 0
    await emu.admin("POST", "restore", snap)
    assert await emu.truth() == truth
    assert (await emu.truth())["events_api"]["enabled"] is False
    await call(emu, "PUT", "/v2/events/enable")
    later = await create(emu, name="Later")
    got = await search_all(emu, limit=1, query={"sort": {"order": "ASC"}})
    assert [e["data"]["id"] for e in got] == [shown["id"], later["id"]]


@pytest.mark.parametrize("searchable", [False, True])
async def test_events_recorded_while_a_token_is_revoked_are_searchable_only_with_the_knob(
        emu: EmulatorHandle, searchable: bool) -> None:
    await emu.set_faults(revoked_events_searchable=searchable)
    await call(emu, "PUT", "/v2/events/enable")
    c = await create(emu)
    await emu.admin("POST", f"sellers/{emu.merchant_id}/revoke")
    await emu.admin("PATCH", f"customers/{c['id']}", {"nickname": "dashboard edit"})  # the app had no access
    await emu.admin("POST", f"sellers/{emu.merchant_id}/restore")
    got = await search_all(emu)
    assert sorted(e["type"] for e in got) == ["customer.created", "customer.updated"][:2 if searchable else 1]
    assert (await emu.truth())["events_api"]["recorded"] == 2


# ---- the application's personal access token --------------------------------------------------------------


async def test_application_token_is_accepted_by_the_events_api_only(multi: EmulatorHandle) -> None:
    _, unknown = await call(multi, "GET", "/v2/customers", "no-such-token")
    for method, path in (("GET", "/v2/customers"), ("POST", "/v2/customers/search"), ("GET", "/v2/customers/groups"),
                         ("GET", "/v2/customers/segments"), ("GET", "/v2/merchants/me"),
                         ("GET", "/v2/customers/NOPE")):
        status, body = await call(multi, method, path, APP, {} if method == "POST" else None)
        assert (status, body) == (401, unknown), path  # exactly as for an unknown token
    assert unknown["errors"][0]["code"] == "UNAUTHORIZED"
    assert unknown["errors"][0]["category"] == "AUTHENTICATION_ERROR"
    status, types = await call(multi, "GET", "/v2/events/types", APP)
    assert status == 200 and "customer.created" in types["event_types"]
    assert await call(multi, "PUT", "/v2/events/enable", APP) == (200, {})
    assert await call(multi, "PUT", "/v2/events/disable", APP) == (200, {})
    assert await call(multi, "POST", "/v2/events", APP, {}) == (200, {})


async def test_application_token_searches_every_seller_merged_in_created_at_order(multi: EmulatorHandle) -> None:
    await call(multi, "PUT", "/v2/events/enable", APP)
    made = []
    for n in range(7):
        mid = ("MA", "MB", "MO")[n % 3]
        made.append((mid, (await create(multi, SELLERS[mid], f"N{n}"))["id"]))
    asc = await search_all(multi, APP, limit=2, query={"sort": {"order": "ASC"}})
    assert [(e["merchant_id"], e["data"]["id"]) for e in asc] == made
    assert [e["created_at"] for e in asc] == sorted(e["created_at"] for e in asc)
    desc = await search_all(multi, APP, limit=3)
    assert [e["event_id"] for e in desc] == [e["event_id"] for e in reversed(asc)]
    only_b = await search_all(multi, APP, limit=1, query={"filter": {"merchant_ids": ["MB"]},
                                                          "sort": {"order": "ASC"}})
    assert [(e["merchant_id"], e["data"]["id"]) for e in only_b] == [m for m in made if m[0] == "MB"]
    two = await search_all(multi, APP, query={"filter": {"merchant_ids": ["MA", "MO"]}})
    assert {e["merchant_id"] for e in two} == {"MA", "MO"} and len(two) == 5
    assert await search(multi, APP, query={"filter": {"merchant_ids": ["NOBODY"]}}) == {}
    # A seller's own personal token still sees only that seller's events, whatever merchant_ids says.
    own = await search_all(multi, SELLERS["MA"], query={"filter": {"merchant_ids": ["MA", "MB"]}})
    assert {e["merchant_id"] for e in own} == {"MA"} and len(own) == 3


async def test_application_cursor_is_stable_while_events_arrive(multi: EmulatorHandle) -> None:
    await call(multi, "PUT", "/v2/events/enable", APP)
    for n in range(6):
        await create(multi, SELLERS[("MA", "MB")[n % 2]], f"P{n}")
    first = await search(multi, APP, limit=2)
    await create(multi, SELLERS["MB"], "Newer")  # newer than page 1: not in the pages that follow
    seen = [e["event_id"] for e in first["events"]]
    cursor = first["cursor"]
    while cursor:
        page = await search(multi, APP, limit=2, cursor=cursor)
        seen += [e["event_id"] for e in page["events"]]
        cursor = page.get("cursor")
    assert len(seen) == len(set(seen)) == 6
    status, body = await call(multi, "POST", "/v2/events", APP, {"limit": 2, "cursor": first["cursor"],
                                                                 "query": {"sort": {"order": "ASC"}}})
    assert status == 400 and body["errors"][0]["code"] == "INVALID_CURSOR"  # a cursor is bound to its query


@pytest.mark.parametrize("scope", ["seller", "application"])
async def test_application_enable_switches_every_seller_and_the_scope_knob_decides_later_sellers(
        scope: str) -> None:
    cfg = EmulatorConfig(seed=34, sellers=dict(SELLERS), token_kinds={"MO": "oauth"}, application_token=APP,
                         knobs=Knobs(events_enablement_scope=scope))
    async with run_emulator(cfg) as emu:
        await call(emu, "PUT", "/v2/events/enable", APP)
        for mid in SELLERS:
            state = (await emu.truth(mid))["events_api"]
            assert state["enabled"] is True and state["changes"][-1]["by"] == "application"
        assert (await emu.admin("GET", "application"))["events_enabled"] is True
        await emu.admin("POST", "sellers", {"merchant_id": "MLNEW", "token": "tok-new"})
        late = await create(emu, "tok-new", "Late")
        got = await search_all(emu, APP, query={"filter": {"merchant_ids": ["MLNEW"]}})
        if scope == "seller":  # enablement was for the sellers known then: the new one starts disabled
            assert got == [] and (await emu.truth("MLNEW"))["events_api"]["enabled"] is False
        else:  # enablement belongs to the application: a seller added later inherits it
            assert [e["data"]["id"] for e in got] == [late["id"]]
            assert (await emu.truth("MLNEW"))["events_api"]["changes"][0]["by"] == "application"
        # A seller's own personal token switches that seller only.
        await call(emu, "PUT", "/v2/events/disable", SELLERS["MA"])
        assert (await emu.truth("MA"))["events_api"]["enabled"] is False
        assert (await emu.truth("MB"))["events_api"]["enabled"] is True
        await call(emu, "PUT", "/v2/events/disable", APP)
        sellers = (await emu.admin("GET", "sellers"))["sellers"]
        assert all(s["events_enabled"] is False for s in sellers)


async def test_admin_sets_and_removes_the_application_token(emu: EmulatorHandle) -> None:
    assert await emu.admin("GET", "application") == {"token": None, "application_id": "sq0idp-square-mirror",
                                                     "application_secret": "sq0csp-emulator-secret",
                                                     "oauth_redirect_url": None, "api_version": "2025-08-20",
                                                     "events_enabled": None, "events_enablement_scope": "seller"}
    assert (await call(emu, "POST", "/v2/events", "late-app", {}))[0] == 401
    out = await emu.admin("PUT", "application", {"token": "late-app"})
    assert out["token"] == "late-app"
    assert await call(emu, "PUT", "/v2/events/enable", "late-app") == (200, {})
    c = await create(emu)
    got = await search(emu, "late-app")
    assert [e["data"]["id"] for e in got["events"]] == [c["id"]]
    with pytest.raises(RuntimeError, match="400"):
        await emu.admin("PUT", "application", {"token": emu.token})  # a seller's token
    with pytest.raises(RuntimeError, match="400"):
        await emu.admin("POST", "sellers", {"merchant_id": "MX", "token": "late-app"})
    snap = await emu.admin("POST", "snapshot", {})
    await emu.admin("PUT", "application", {"token": None})
    assert (await call(emu, "POST", "/v2/events", "late-app", {}))[0] == 401
    await emu.admin("POST", "restore", snap)
    assert (await call(emu, "POST", "/v2/events", "late-app", {}))[0] == 200
    await emu.admin("POST", "reset")  # back to the configured (absent) application token
    assert (await emu.admin("GET", "application"))["token"] is None


# ---- OAuth tokens -------------------------------------------------------------------------------------------


async def test_events_api_refuses_oauth_tokens_customers_api_accepts_them(multi: EmulatorHandle) -> None:
    await emu_admin_oauth_seller(multi)
    for token in (SELLERS["MO"], "tok-oauth-2"):
        status, body = await call(multi, "POST", "/v2/customers", token, {"given_name": "Oauth"})
        assert status == 200, body
        cid = body["customer"]["id"]
        assert (await call(multi, "GET", f"/v2/customers/{cid}", token))[0] == 200
        assert (await call(multi, "GET", "/v2/customers", token))[0] == 200
        for method, path in (("POST", "/v2/events"), ("PUT", "/v2/events/enable"), ("PUT", "/v2/events/disable"),
                             ("GET", "/v2/events/types")):
            status, body = await call(multi, method, path, token, {} if method == "POST" else None)
            assert status == 401, path
            [err] = body["errors"]
            assert err["code"] == "UNAUTHORIZED" and err["category"] == "AUTHENTICATION_ERROR"
            assert "personal access token" in err["detail"]
    sellers = {s["merchant_id"]: s for s in (await multi.admin("GET", "sellers"))["sellers"]}
    assert sellers["MO"]["token_kind"] == "oauth" and sellers["MA"]["token_kind"] == "personal"
    assert sellers["MLOAUTH"] == {"merchant_id": "MLOAUTH", "token": "tok-oauth-2", "token_kind": "oauth",
                                  "revoked": False, "events_enabled": False}
    # Giving a seller a personal token again makes the Events API accept it.
    await multi.admin("POST", "sellers", {"merchant_id": "MLOAUTH", "token": "tok-pat-2"})
    assert (await call(multi, "PUT", "/v2/events/enable", "tok-pat-2")) == (200, {})


async def emu_admin_oauth_seller(emu: EmulatorHandle) -> None:
    out = await emu.admin("POST", "sellers", {"merchant_id": "MLOAUTH", "token": "tok-oauth-2",
                                              "token_kind": "oauth"})
    assert out["token_kind"] == "oauth"
    with pytest.raises(RuntimeError, match="400"):
        await emu.admin("POST", "sellers", {"merchant_id": "MLBAD", "token": "t", "token_kind": "bearer"})


async def test_revoked_oauth_token_gets_revoked_error_before_the_events_refusal(multi: EmulatorHandle) -> None:
    await multi.admin("POST", "sellers/MO/revoke")
    status, body = await call(multi, "POST", "/v2/events", SELLERS["MO"], {})
    assert status == 401 and body["errors"][0]["code"] == "ACCESS_TOKEN_REVOKED"
