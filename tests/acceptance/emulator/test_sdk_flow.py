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

from emulator import EmulatorConfig
from emulator.testing import run_emulator

SPEC_PATH = Path("/work/shared/square/square-openapi-customers.json")


def _load_spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.skip("official OpenAPI file not available")
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
            "SearchEventsResponse"} <= set(checker.checked)
