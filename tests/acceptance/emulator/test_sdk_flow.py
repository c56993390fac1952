"""The official squareup SDK runs a full flow against a running emulator, and every response body of
the public endpoints validates against the trimmed official OpenAPI schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from square import AsyncSquare
from square.core.api_error import ApiError

from emulator import EmulatorConfig, Knobs
from emulator.testing import run_emulator

SPEC_PATH = Path(__file__).resolve().parents[2] / "data" / "square-openapi-customers.json"


def _load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return spec


class SchemaChecker:
    """Maps (method, concrete path) to the operation's 200 response schema and validates bodies."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.components = spec["components"]
        self.routes: list[tuple[str, re.Pattern[str], str]] = []
        for template, ops in spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
            for method, op in ops.items():
                ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                # literal paths first so /v2/customers/search never matches /v2/customers/{customer_id}
                self.routes.append((method.upper(), pattern, ref))
        self.routes.sort(key=lambda r: r[1].pattern.count("[^/]+"))
        self.checked: list[str] = []

    def validate(self, method: str, path: str, body: Any) -> None:
        if path.startswith("/v2/merchants"):
            return  # Merchants API is not in the trimmed spec
        for m, pattern, ref in self.routes:
            if m == method and pattern.match(path):
                schema = {"$ref": ref, "components": self.components}
                jsonschema.validate(body, schema, cls=jsonschema.Draft4Validator)
                self.checked.append(ref.rsplit("/", 1)[-1])
                return
        raise AssertionError(f"no schema for {method} {path}")


async def test_sdk_full_flow_and_every_response_matches_openapi() -> None:
    checker = SchemaChecker(_load_spec())

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        if response.status_code == 200:
            checker.validate(response.request.method, response.request.url.path, response.json())

    async with run_emulator(EmulatorConfig(seed=5)) as emu:
        await emu.seed(customers=150, groups=2, segments=2)
        http = httpx.AsyncClient(event_hooks={"response": [hook]}, timeout=30)
        client = AsyncSquare(base_url=emu.base_url, token=emu.token, httpx_client=http)

        me = await client.merchants.get("me")
        assert me.merchant is not None and me.merchant.id == emu.merchant_id
        await client.events.enable_events()  # Square: events are searchable only once enabled

        created = await client.customers.create(idempotency_key="sdk-1", given_name="Sdk", family_name="User",
                                                email_address="sdk.user@example.com", phone_number="+14155550123",
                                                birthday="1990-01-02", address={"address_line_1": "1 Main St",
                                                                                "locality": "SF"})
        assert created.customer is not None and created.customer.id
        cid = created.customer.id
        got = await client.customers.get(cid)
        assert got.customer is not None and got.customer.version == 0
        upd = await client.customers.update(cid, nickname="sdk", version=0)
        assert upd.customer is not None and upd.customer.version == 1
        with pytest.raises(ApiError) as stale:
            await client.customers.update(cid, nickname="x", version=0, request_options={"max_retries": 0})
        assert stale.value.status_code == 400

        listed = [c async for c in await client.customers.list(limit=40, sort_field="CREATED_AT", count=True)]
        truth = await emu.truth()
        public = [c for c in truth["customers"].values() if any(
            c.get(f) for f in ("given_name", "family_name", "company_name", "email_address", "phone_number"))]
        assert len(listed) == len(public) == len({c.id for c in listed})

        found = await client.customers.search(limit=5, query={"filter": {"email_address": {"fuzzy": "sdk example"}},
                                                              "sort": {"field": "CREATED_AT", "order": "ASC"}})
        assert found.customers is not None and [c.id for c in found.customers] == [cid]

        group = await client.customers.groups.create(group={"name": "SDK group"}, idempotency_key="g-1")
        assert group.group is not None and group.group.id
        gid = group.group.id
        await client.customers.groups.update(gid, group={"name": "SDK group 2"})
        assert (await client.customers.groups.get(gid)).group.name == "SDK group 2"  # type: ignore[union-attr]
        groups = [g async for g in await client.customers.groups.list(limit=1)]
        assert gid in {g.id for g in groups} and len(groups) == 3
        await client.customers.groups.add(cid, gid)
        in_group = await client.customers.search(query={"filter": {"group_ids": {"all_": [gid]}}})  # type: ignore[typeddict-unknown-key]
        assert in_group.customers is not None and [c.id for c in in_group.customers] == [cid]
        await client.customers.groups.remove(cid, gid)

        segments = [s async for s in await client.customers.segments.list(limit=1)]
        assert len(segments) == 2 and segments[0].id
        seg = await client.customers.segments.get(segments[0].id)
        assert seg.segment is not None

        bulk = await client.customers.batch_create(customers={"b1": {"given_name": "Bulk1"},
                                                              "b2": {"given_name": "Bulk2"}})
        assert bulk.responses is not None
        bids = [r.customer.id for r in bulk.responses.values() if r.customer is not None]
        assert len(bids) == 2
        bu = await client.customers.bulk_update_customers(customers={bids[0]: {"nickname": "b", "version": 0}})
        assert bu.responses[bids[0]].customer.version == 1  # type: ignore[index,union-attr]
        br = await client.customers.bulk_retrieve_customers(customer_ids=[*bids, "NOPE"])
        assert br.responses["NOPE"].errors[0].code == "NOT_FOUND"  # type: ignore[index,union-attr]
        bd = await client.customers.bulk_delete_customers(customer_ids=bids)
        assert set(bd.responses or {}) == set(bids)

        merged = await emu.merge([cid, public[0]["id"]])
        redirected = await client.customers.get(cid)
        assert redirected.customer is not None and redirected.customer.id == merged["customer"]["id"]
        await client.customers.delete(merged["customer"]["id"], version=0)
        with pytest.raises(ApiError) as gone:
            await client.customers.get(merged["customer"]["id"])
        assert gone.value.status_code == 404

        events = await client.events.search_events(limit=10, query={"filter": {"event_types": ["customer.deleted"]}})
        assert events.events and all(e.type == "customer.deleted" for e in events.events)
        await client.customers.groups.delete(gid)
        await http.aclose()

    assert {"CreateCustomerResponse", "RetrieveCustomerResponse", "UpdateCustomerResponse", "ListCustomersResponse",
            "SearchCustomersResponse", "BulkCreateCustomersResponse", "BulkUpdateCustomersResponse",
            "BulkRetrieveCustomersResponse", "BulkDeleteCustomersResponse", "DeleteCustomerResponse",
            "ListCustomerGroupsResponse", "CreateCustomerGroupResponse", "RetrieveCustomerGroupResponse",
            "UpdateCustomerGroupResponse", "DeleteCustomerGroupResponse", "AddGroupToCustomerResponse",
            "RemoveGroupFromCustomerResponse", "ListCustomerSegmentsResponse", "RetrieveCustomerSegmentResponse",
            "SearchEventsResponse", "EnableEventsResponse"} <= set(checker.checked)


async def test_error_and_edge_responses_match_openapi_too() -> None:
    """Error envelopes, empty results and bulk per-item errors are valid response bodies as well."""
    import aiohttp

    checker = SchemaChecker(_load_spec())
    async with run_emulator(EmulatorConfig(seed=8)) as emu, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {emu.token}"}) as s:
        calls: list[tuple[str, str, Any]] = [
            ("GET", "/v2/customers", None),
            ("GET", "/v2/customers?limit=0", None),
            ("POST", "/v2/customers", {"nickname": "x"}),
            ("POST", "/v2/customers", {"given_name": "A", "bogus": 1}),
            ("POST", "/v2/customers", {"phone_number": "1", "email_address": "x"}),
            ("GET", "/v2/customers/NOPE", None),
            ("PUT", "/v2/customers/NOPE", {"given_name": "x"}),
            ("DELETE", "/v2/customers/NOPE", None),
            ("POST", "/v2/customers/search", {"query": {"filter": {"group_ids": {"any": ["NOPE"]}}}}),
            ("POST", "/v2/customers/search", {"query": {"filter": {"segment_ids": {"any": ["NOPE"]}}}}),
            ("POST", "/v2/customers/bulk-retrieve", {"customer_ids": ["NOPE"]}),
            ("POST", "/v2/customers/bulk-delete", {"customer_ids": ["NOPE"]}),
            ("POST", "/v2/customers/bulk-update", {"customers": {"NOPE": {"given_name": "x"}}}),
            ("POST", "/v2/customers/bulk-create", {"customers": {"k": {"email_address": "bad"}}}),
            ("GET", "/v2/customers/groups", None),
            ("GET", "/v2/customers/groups/NOPE", None),
            ("POST", "/v2/customers/groups", {"group": {}}),
            ("GET", "/v2/customers/segments", None),
            ("GET", "/v2/customers/segments/NOPE", None),
            ("PUT", "/v2/customers/NOPE/groups/NOPE", None),
            ("POST", "/v2/events", {"limit": 500}),
            ("POST", "/v2/events", {}),
            ("GET", "/v2/events/types", None),
            ("PUT", "/v2/events/disable", None),
            ("POST", "/v2/events", {}),
            ("PUT", "/v2/events/enable", None),
        ]
        statuses = []
        for method, path, body in calls:
            async with s.request(method, emu.base_url + path, json=body) as r:
                statuses.append(r.status)
                checker.validate(method, path.split("?")[0], await r.json())
        assert 200 in statuses and 400 in statuses and 404 in statuses


async def test_webhook_payloads_match_the_event_schemas() -> None:
    spec = _load_spec()
    comps = spec["components"]
    names = {"customer.created": "CustomerCreatedEvent", "customer.updated": "CustomerUpdatedEvent",
             "customer.deleted": "CustomerDeletedEvent"}
    async with run_emulator(EmulatorConfig(seed=12, knobs=Knobs(events_enabled_by_default=True))) as emu:
        await emu.seed(customers=3, groups=1)
        truth = await emu.truth()
        ids = list(truth["customers"])
        gid = next(iter(truth["groups"]))
        import aiohttp

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {emu.token}"}) as s:
            await s.put(f"{emu.base_url}/v2/customers/{ids[0]}/groups/{gid}")
            await s.put(f"{emu.base_url}/v2/customers/{ids[1]}", json={"note": "n"})
        await emu.merge(ids[:2])
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {emu.token}"}) as s, s.post(
                emu.base_url + "/v2/events", json={}) as r:
            events = (await r.json())["events"]
    assert {e["type"] for e in events} == set(names)
    for event in events:
        jsonschema.validate(event, {"$ref": f"#/components/schemas/{names[event['type']]}", "components": comps},
                            cls=jsonschema.Draft4Validator)


async def test_custom_attribute_flow_matches_openapi_and_feeds_search() -> None:
    import aiohttp

    checker = SchemaChecker(_load_spec())
    string_schema = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}
    number_schema = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.Number"}
    async with run_emulator(EmulatorConfig(seed=21)) as emu, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {emu.token}"}) as s:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with s.request(method, emu.base_url + path, json=body) as r:
                data = await r.json()
                checker.validate(method, path.split("?")[0], data)
                return r.status, data

        _, a = await call("POST", "/v2/customers", {"given_name": "Attr", "family_name": "One"})
        _, b = await call("POST", "/v2/customers", {"given_name": "Attr", "family_name": "Two"})
        a_id, b_id = a["customer"]["id"], b["customer"]["id"]
        status, d = await call("POST", "/v2/customers/custom-attribute-definitions", {
            "custom_attribute_definition": {"key": "drink", "schema": string_schema, "name": "Drink",
                                            "visibility": "VISIBILITY_READ_WRITE_VALUES"}, "idempotency_key": "d1"})
        assert status == 200 and d["custom_attribute_definition"]["version"] == 1
        await call("POST", "/v2/customers/custom-attribute-definitions", {
            "custom_attribute_definition": {"key": "visits", "schema": number_schema, "name": "Visits"}})
        status, _ = await call("POST", "/v2/customers/custom-attribute-definitions", {
            "custom_attribute_definition": {"key": "drink", "schema": string_schema}})
        assert status == 409
        status, up = await call("POST", f"/v2/customers/{a_id}/custom-attributes/drink",
                                {"custom_attribute": {"value": "Double-shot breve"}})
        assert status == 200 and up["custom_attribute"]["version"] == 1
        status, up = await call("POST", f"/v2/customers/{a_id}/custom-attributes/drink",
                                {"custom_attribute": {"value": "Flat white", "version": 1}})
        assert up["custom_attribute"]["version"] == 2
        status, _ = await call("POST", f"/v2/customers/{a_id}/custom-attributes/drink",
                               {"custom_attribute": {"value": "x", "version": 1}})
        assert status == 400
        status, bulk = await call("POST", "/v2/customers/custom-attributes/bulk-upsert", {"values": {
            "r1": {"customer_id": b_id, "custom_attribute": {"key": "visits", "value": "7"}},
            "r2": {"customer_id": b_id, "custom_attribute": {"key": "visits", "value": "many"}}}})
        assert bulk["values"]["r1"]["custom_attribute"]["value"] == "7" and bulk["values"]["r2"]["errors"]
        _, got = await call("GET", f"/v2/customers/{a_id}/custom-attributes/drink?with_definition=true")
        assert got["custom_attribute"]["definition"]["key"] == "drink"
        _, listed = await call("GET", f"/v2/customers/{a_id}/custom-attributes")
        assert [c["key"] for c in listed["custom_attributes"]] == ["drink"]
        _, defs = await call("GET", "/v2/customers/custom-attribute-definitions?limit=1")
        assert len(defs["custom_attribute_definitions"]) == 1 and defs["cursor"]
        _, found = await call("POST", "/v2/customers/search", {"query": {"filter": {"custom_attribute": {
            "filters": [{"key": "drink", "filter": {"text": {"fuzzy": "flat"}}}]}}}})
        assert [c["id"] for c in found["customers"]] == [a_id]
        _, found = await call("POST", "/v2/customers/search", {"query": {"filter": {"custom_attribute": {
            "filters": [{"key": "visits", "filter": {"number": {"start_at": "5", "end_at": "10"}}}]}}}})
        assert [c["id"] for c in found["customers"]] == [b_id]
        _, c = await call("GET", f"/v2/customers/{a_id}")
        assert c["customer"]["version"] == 0  # custom attributes never bump the profile version
        status, _ = await call("DELETE", f"/v2/customers/{a_id}/custom-attributes/drink")
        assert status == 200
        _, upd = await call("PUT", "/v2/customers/custom-attribute-definitions/drink",
                            {"custom_attribute_definition": {"name": "Favourite drink", "version": 1}})
        assert upd["custom_attribute_definition"]["version"] == 2
        status, _ = await call("DELETE", "/v2/customers/custom-attribute-definitions/drink")
        assert status == 200
        status, _ = await call("GET", "/v2/customers/custom-attribute-definitions/drink")
        assert status == 404


async def test_sdk_custom_attribute_calls_and_their_webhooks_match_openapi() -> None:
    """The SDK's custom attribute calls (definitions, values, batch upsert, the search filter) against a seeded
    directory with other owners' definitions; every response and a webhook of each custom attribute event type
    (the deprecated ones included, in both payload shapes) validate against the spec."""
    from square.types.custom_attribute import CustomAttribute

    from tests.integration.emulator.helpers import receiving

    spec = _load_spec()
    checker = SchemaChecker(spec)
    events_index = spec["x-customer-webhook-events"]
    attribute_types = sorted(t for t in events_index if t.startswith("customer.custom_attribute"))
    assert len(attribute_types) == 20

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        if response.status_code == 200:
            checker.validate(response.request.method, response.request.url.path, response.json())

    string_schema = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}
    async with run_emulator(EmulatorConfig(seed=23)) as emu, receiving() as receiver:
        await emu.subscribe(receiver.url, "sdk-key", event_types=attribute_types)
        seeded = await emu.seed(customers=60, custom_attributes={"definitions": 8, "share": 0.5, "min": 1, "max": 3,
                                                                  "hidden": 1})
        truth = await emu.truth()
        http = httpx.AsyncClient(event_hooks={"response": [hook]}, timeout=30)
        client = AsyncSquare(base_url=emu.base_url, token=emu.token, httpx_client=http)
        defs = client.customers.custom_attribute_definitions
        attrs = client.customers.custom_attributes

        listed = [d async for d in await defs.list(limit=3)]
        assert [d.key for d in listed] == list(truth["custom_attribute_definitions"])
        created = await defs.create(custom_attribute_definition={
            "key": "sdk-drink", "schema": string_schema, "name": "SDK drink", "description": "d",
            "visibility": "VISIBILITY_READ_WRITE_VALUES"}, idempotency_key="sdk-def-1")
        assert created.custom_attribute_definition is not None
        assert created.custom_attribute_definition.key == "sdk-drink"
        other = next(k for k in truth["custom_attribute_definitions"] if k.startswith("sq0idp-emulator-partner-app:"))
        got = await defs.get(other)  # another app's definition, by its qualified key
        assert got.custom_attribute_definition is not None and got.custom_attribute_definition.key == other
        updated = await defs.update("sdk-drink", custom_attribute_definition={"name": "SDK drink 2", "version": 1})
        assert updated.custom_attribute_definition is not None and updated.custom_attribute_definition.version == 2

        cid, held = next(iter(truth["custom_attributes"].items()))
        values: list[CustomAttribute] = [a async for a in await attrs.list(cid, limit=1, with_definitions=True)]
        assert sorted(a.key or "" for a in values) == sorted(held)
        upserted = await attrs.upsert(cid, "sdk-drink", custom_attribute={"value": "Flat white"},
                                      idempotency_key="sdk-up-1")
        assert upserted.custom_attribute is not None and upserted.custom_attribute.version == 1
        one = await attrs.get(cid, "sdk-drink", with_definition=True)
        assert one.custom_attribute is not None and one.custom_attribute.value == "Flat white"
        others = [c for c in truth["custom_attributes"] if c != cid][:2]
        batch = await defs.batch_upsert(values={
            f"r{i}": {"customer_id": c, "custom_attribute": {"key": "sdk-drink", "value": f"Drink {i}"}}
            for i, c in enumerate(others)})
        assert batch.values is not None and all(v.custom_attribute is not None for v in batch.values.values())
        found = await client.customers.search(limit=100, query={"filter": {"custom_attribute": {"filters": [
            {"key": "sdk-drink", "filter": {"text": {"fuzzy": "drink"}}}]}}})
        assert found.customers is not None and sorted(c.id or "" for c in found.customers) == sorted(others)
        await attrs.delete(cid, "sdk-drink")
        await emu.set_faults(custom_attribute_event_shape="wrapped")
        await attrs.upsert(cid, "sdk-drink", custom_attribute={"value": "Wrapped"})
        await defs.delete("sdk-drink")
        await http.aclose()
        assert await emu.drain_webhooks(10)
    assert seeded["custom_attributes"]["values"] > 0

    assert {"ListCustomerCustomAttributeDefinitionsResponse", "CreateCustomerCustomAttributeDefinitionResponse",
            "RetrieveCustomerCustomAttributeDefinitionResponse", "UpdateCustomerCustomAttributeDefinitionResponse",
            "DeleteCustomerCustomAttributeDefinitionResponse", "ListCustomerCustomAttributesResponse",
            "RetrieveCustomerCustomAttributeResponse", "UpsertCustomerCustomAttributeResponse",
            "DeleteCustomerCustomAttributeResponse", "BulkUpsertCustomerCustomAttributesResponse",
            "SearchCustomersResponse"} <= set(checker.checked)
    comps = spec["components"]
    got_types = {e["type"] for e in receiver.received}
    assert got_types == set(attribute_types)  # every kind, deprecated ones included (the subscription names them)
    shapes = set()
    for event in receiver.received:
        schema = events_index[event["type"]]["schema"]
        jsonschema.validate(event, {"$ref": schema, "components": comps}, cls=jsonschema.Draft4Validator)
        shapes.add("wrapped" if set(event["data"]["object"]) == {event["data"]["type"]} else "bare")
    assert shapes == {"bare", "wrapped"}
