"""Customers API behaviour against a real emulator server (aiohttp client, real port)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=7)) as handle:
        yield handle


class Client:
    def __init__(self, handle: EmulatorHandle, session: aiohttp.ClientSession, token: str | None = None) -> None:
        self.base = handle.base_url
        self.session = session
        self.token = token or handle.token

    async def call(self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with self.session.request(method, self.base + path, json=json, headers=hdrs, params=params) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def api(emu: EmulatorHandle) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(emu, session)


async def test_create_then_retrieve_returns_version_zero_and_third_party_source(api: Client) -> None:
    status, body = await api.call("POST", "/v2/customers", {"given_name": "Ada", "email_address": "ada@example.com",
                                                            "birthday": "04-20"})
    assert status == 200
    c = body["customer"]
    assert c["version"] == 0 and c["creation_source"] == "THIRD_PARTY" and c["birthday"] == "0000-04-20"
    assert len(c["id"]) == 26 and c["id"].isalnum() and c["id"].isupper()
    status, got = await api.call("GET", f"/v2/customers/{c['id']}")
    assert status == 200 and got == body


async def test_create_without_identifying_field_is_400(api: Client) -> None:
    status, body = await api.call("POST", "/v2/customers", {"note": "hi"})
    assert status == 400 and body["errors"][0]["code"] == "BAD_REQUEST"


async def test_create_with_unknown_field_is_rejected_naming_it(api: Client) -> None:
    status, body = await api.call("POST", "/v2/customers", {"given_name": "A", "favourite": "x"})
    assert status == 400
    err = body["errors"][0]
    assert err["code"] == "BAD_REQUEST" and err["field"] == "favourite"
    assert err["detail"].startswith("The field named 'favourite' is unrecognized (line 1, character ")


async def test_invalid_phone_and_email_and_too_long_name(api: Client) -> None:
    status, body = await api.call("POST", "/v2/customers", {"given_name": "x" * 301, "phone_number": "12",
                                                            "email_address": "nope"})
    assert status == 400
    codes = {e["code"] for e in body["errors"]}
    assert codes == {"VALUE_TOO_LONG", "INVALID_PHONE_NUMBER", "INVALID_EMAIL_ADDRESS"}
    phone = next(e for e in body["errors"] if e["code"] == "INVALID_PHONE_NUMBER")
    assert phone == {"code": "INVALID_PHONE_NUMBER", "detail": "Expected phone_number to be a valid phone number",
                     "field": "phone_number", "category": "INVALID_REQUEST_ERROR"}


async def test_idempotent_create_returns_original(api: Client) -> None:
    _, first = await api.call("POST", "/v2/customers", {"idempotency_key": "k1", "given_name": "A"})
    _, second = await api.call("POST", "/v2/customers", {"idempotency_key": "k1", "given_name": "B"})
    assert first == second


async def test_deleted_customer_returns_exact_404(api: Client) -> None:
    _, body = await api.call("POST", "/v2/customers", {"given_name": "Gone"})
    cid = body["customer"]["id"]
    status, deleted = await api.call("DELETE", f"/v2/customers/{cid}")
    assert status == 200 and deleted == {}
    status, body = await api.call("GET", f"/v2/customers/{cid}")
    assert status == 404
    assert body == {"errors": [{"code": "NOT_FOUND", "detail": f"Customer with ID `{cid}` not found.",
                                "category": "INVALID_REQUEST_ERROR"}]}


async def test_update_sparse_clear_and_version_rules(api: Client) -> None:
    _, body = await api.call("POST", "/v2/customers", {"given_name": "A", "family_name": "B", "nickname": "n",
                                                       "address": {"address_line_1": "1 Main", "locality": "X"}})
    cid = body["customer"]["id"]
    status, body = await api.call("PUT", f"/v2/customers/{cid}", {"nickname": "", "address": {}, "version": 0})
    c = body["customer"]
    assert status == 200 and c["version"] == 1 and "nickname" not in c and c["address"]["locality"] == "X"
    status, body = await api.call("PUT", f"/v2/customers/{cid}", {"family_name": None,
                                                                  "address": {"locality": None}},
                                  headers={"X-Clear-Null": "true"})
    c = body["customer"]
    assert "family_name" not in c and c["address"] == {"address_line_1": "1 Main"} and c["version"] == 2
    status, body = await api.call("PUT", f"/v2/customers/{cid}", {"given_name": "Z", "version": 0})
    assert status == 400 and body["errors"][0]["field"] == "version"
    status, body = await api.call("PUT", f"/v2/customers/{cid}", {"version": 2})
    assert status == 400 and body["errors"][0]["code"] == "BAD_REQUEST"
    status, body = await api.call("DELETE", f"/v2/customers/{cid}", params={"version": "1"})
    assert status == 400


async def test_missing_and_unknown_token_get_401(emu: EmulatorHandle) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.base_url + "/v2/customers") as resp:
            body = await resp.json()
            assert resp.status == 401 and body["errors"][0]["category"] == "AUTHENTICATION_ERROR"
        async with session.get(emu.base_url + "/v2/customers", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["errors"][0] == {"code": "UNAUTHORIZED", "detail":
                                                         "This request could not be authorized.",
                                                         "category": "AUTHENTICATION_ERROR"}


async def test_list_pages_sorted_by_default_name_and_counts(emu: EmulatorHandle, api: Client) -> None:
    await emu.seed(customers=250)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "100", "count": "true"}
        if cursor:
            params["cursor"] = cursor
        status, body = await api.call("GET", "/v2/customers", params=params)
        assert status == 200
        seen.extend(body.get("customers", []))
        cursor = body.get("cursor")
        if not cursor:
            break
    truth = await emu.truth()
    public = [c for c in truth["customers"].values() if any(
        c.get(f) for f in ("given_name", "family_name", "company_name", "email_address", "phone_number"))]
    assert body["count"] == len(public) == len(seen)
    assert len({c["id"] for c in seen}) == len(seen)

    def key(c: dict[str, Any]) -> str:
        name = " ".join(p for p in (c.get("given_name"), c.get("family_name")) if p)
        return (name or c.get("company_name") or c.get("email_address") or c.get("phone_number") or "").casefold()

    assert [key(c) for c in seen] == sorted(key(c) for c in seen)


async def test_list_limit_bounds(api: Client) -> None:
    status, body = await api.call("GET", "/v2/customers", params={"limit": "0"})
    assert status == 400 and body["errors"][0]["code"] == "VALUE_TOO_LOW"
    status, body = await api.call("GET", "/v2/customers", params={"limit": "101"})
    assert status == 400 and body["errors"][0]["code"] == "VALUE_TOO_HIGH"
    status, body = await api.call("GET", "/v2/customers")
    assert status == 200 and body == {}


async def test_instant_profile_is_hidden_from_list_but_retrievable(emu: EmulatorHandle, api: Client) -> None:
    created = await emu.admin("POST", "instant-profiles", {})
    cid = created["customer"]["id"]
    assert created["customer"]["creation_source"] == "INSTANT_PROFILE"
    _, body = await api.call("GET", "/v2/customers")
    assert body == {}
    status, body = await api.call("POST", "/v2/customers/search", {"query": {"filter": {"creation_source": {
        "values": ["INSTANT_PROFILE"]}}}})
    assert body == {}
    status, body = await api.call("GET", f"/v2/customers/{cid}")
    assert status == 200 and body["customer"]["id"] == cid


async def test_merge_redirects_retrieve_and_records_truth(emu: EmulatorHandle, api: Client) -> None:
    _, a = await api.call("POST", "/v2/customers", {"given_name": "A", "email_address": "a@example.com"})
    _, b = await api.call("POST", "/v2/customers", {"given_name": "B", "phone_number": "+14155550100"})
    ids = [a["customer"]["id"], b["customer"]["id"]]
    merged = (await emu.merge(ids))["customer"]
    assert merged["creation_source"] == "MERGE" and merged["id"] not in ids
    status, body = await api.call("GET", f"/v2/customers/{ids[0]}")
    assert status == 200 and body["customer"]["id"] == merged["id"]
    truth = await emu.truth()
    assert truth["tombstones"][ids[0]]["merged_into"] == merged["id"]
    assert {m["from_customer_id"] for m in truth["merges"]} == set(ids)
    status, body = await api.call("POST", "/v2/customers/bulk-retrieve", {"customer_ids": ids})
    assert body["responses"][ids[0]]["errors"][0]["code"] == "NOT_FOUND"


async def test_bulk_operations_return_per_item_results(api: Client) -> None:
    status, body = await api.call("POST", "/v2/customers/bulk-create", {"customers": {
        "k1": {"given_name": "One"}, "k2": {"email_address": "bad"}}})
    assert status == 200
    cid = body["responses"]["k1"]["customer"]["id"]
    assert body["responses"]["k2"]["errors"][0]["code"] == "INVALID_EMAIL_ADDRESS"
    status, body = await api.call("POST", "/v2/customers/bulk-update", {"customers": {
        cid: {"family_name": "Two", "version": 0}, "MISSING": {"given_name": "x"}}})
    assert body["responses"][cid]["customer"]["version"] == 1
    assert body["responses"]["MISSING"]["errors"][0]["code"] == "NOT_FOUND"
    status, body = await api.call("POST", "/v2/customers/bulk-delete", {"customer_ids": [cid, "MISSING"]})
    assert body["responses"][cid] == {}
    assert body["responses"]["MISSING"]["errors"][0]["detail"] == "Customer with ID `MISSING` not found."
    status, body = await api.call("POST", "/v2/customers/bulk-retrieve", {"customer_ids": []})
    assert status == 400


async def test_group_membership_bumps_version_and_group_delete_cleans_members(emu: EmulatorHandle,
                                                                                api: Client) -> None:
    _, g = await api.call("POST", "/v2/customers/groups", {"idempotency_key": "g", "group": {"name": "VIP"}})
    gid = g["group"]["id"]
    _, again = await api.call("POST", "/v2/customers/groups", {"idempotency_key": "g", "group": {"name": "Other"}})
    assert again == g
    _, c = await api.call("POST", "/v2/customers", {"given_name": "M"})
    cid = c["customer"]["id"]
    status, body = await api.call("PUT", f"/v2/customers/{cid}/groups/{gid}")
    assert status == 200 and body == {}
    _, c = await api.call("GET", f"/v2/customers/{cid}")
    assert c["customer"]["group_ids"] == [gid] and c["customer"]["version"] == 1
    truth = await emu.truth()
    assert truth["group_members"][gid] == [cid]
    status, _ = await api.call("DELETE", f"/v2/customers/groups/{gid}")
    assert status == 200
    _, c = await api.call("GET", f"/v2/customers/{cid}")
    assert "group_ids" not in c["customer"]
    status, body = await api.call("POST", "/v2/customers/groups", {"group": {"name": "x", "colour": "red"}})
    assert status == 400 and body["errors"][0]["field"] == "colour"


async def test_segments_change_without_version_bump(emu: EmulatorHandle, api: Client) -> None:
    seg = (await emu.admin("POST", "segments", {"name": "Lunch regulars"}))["segment"]
    _, c = await api.call("POST", "/v2/customers", {"given_name": "S"})
    cid = c["customer"]["id"]
    await emu.admin("PUT", f"segments/{seg['id']}/members/{cid}")
    _, c = await api.call("GET", f"/v2/customers/{cid}")
    assert c["customer"]["segment_ids"] == [seg["id"]] and c["customer"]["version"] == 0
    _, body = await api.call("GET", f"/v2/customers/segments/{seg['id']}")
    assert body["segment"]["name"] == "Lunch regulars"
    _, body = await api.call("GET", "/v2/customers/segments", params={"limit": "51"})
    assert body["errors"][0]["code"] == "VALUE_TOO_HIGH"


async def test_sellers_are_isolated_and_merchant_me(emu: EmulatorHandle, api: Client) -> None:
    await emu.admin("POST", "sellers", {"merchant_id": "MLOTHER", "token": "other-token"})
    other = Client(emu, api.session, "other-token")
    await other.call("POST", "/v2/customers", {"given_name": "Other"})
    _, body = await api.call("GET", "/v2/customers")
    assert body == {}
    _, me = await other.call("GET", "/v2/merchants/me")
    assert me["merchant"]["id"] == "MLOTHER"
    await emu.admin("POST", "sellers/MLOTHER/revoke")
    status, body = await other.call("GET", "/v2/customers")
    assert status == 401


async def test_square_version_header_is_echoed_and_validated(api: Client) -> None:
    async with api.session.get(api.base + "/v2/customers", headers={"Authorization": f"Bearer {api.token}",
                                                                   "Square-Version": "2025-08-20"}) as r:
        assert r.status == 200 and r.headers["Square-Version"] == "2025-08-20"
    status, body = await api.call("GET", "/v2/customers", headers={"Square-Version": "latest"})
    assert status == 400 and body["errors"][0]["code"] == "INVALID_SQUARE_VERSION_FORMAT"


async def test_dashboard_edit_changes_preferences_and_bumps_version(emu: EmulatorHandle, api: Client) -> None:
    _, c = await api.call("POST", "/v2/customers", {"given_name": "Pref", "note": "x"})
    cid = c["customer"]["id"]
    out = await emu.admin("PATCH", f"customers/{cid}", {"preferences": {"email_unsubscribed": True}, "note": None})
    assert out["customer"]["preferences"] == {"email_unsubscribed": True}
    assert out["customer"]["version"] == 1 and "note" not in out["customer"]
    status, body = await api.call("PUT", f"/v2/customers/{cid}", {"preferences": {"email_unsubscribed": False}})
    assert status == 400 and body["errors"][0]["field"] == "preferences"
