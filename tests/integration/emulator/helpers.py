"""Test helpers shared by the emulator's integration tests (the fixtures are in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from emulator.testing import EmulatorHandle

COMMON = "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common."
STRING = {"$ref": COMMON + "String"}
NUMBER = {"$ref": COMMON + "Number"}
OTHER_APP = "sq0idp-OtherApp0000000000000"


class Api:
    """Public calls as the default seller (the mirror's application) and admin calls, returning (status, body)."""

    def __init__(self, emu: EmulatorHandle, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.emu.token}"}
        async with self.session.request(method, self.emu.base_url + path, json=json, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, json: Any = None) -> Any:
        status, body = await self.call(method, path, json)
        assert status == 200, (method, path, status, body)
        return body

    async def customer(self, name: str = "Attr") -> str:
        cid: str = (await self.ok("POST", "/v2/customers", {"given_name": name}))["customer"]["id"]
        return cid

    async def define(self, key: str, schema: dict[str, Any] | None = None,
                     visibility: str = "VISIBILITY_READ_WRITE_VALUES") -> dict[str, Any]:
        """A definition of the mirror's application, through the public API."""
        body = await self.ok("POST", "/v2/customers/custom-attribute-definitions", {"custom_attribute_definition": {
            "key": key, "schema": schema or STRING, "name": key, "description": key, "visibility": visibility}})
        definition: dict[str, Any] = body["custom_attribute_definition"]
        return definition

    async def define_as(self, owner: str | None, key: str | None, schema: dict[str, Any] | None = None,
                        visibility: str | None = None) -> str:
        """A definition of another owner (an application ID, "square"), through the admin API: its qualified key."""
        spec: dict[str, Any] = {"schema": schema or STRING, "name": f"{owner}:{key}", "description": "d"}
        if key is not None:
            spec["key"] = key
        if visibility is not None:
            spec["visibility"] = visibility
        body = await self.emu.admin("POST", "custom-attribute-definitions", {"owner": owner, "definition": spec})
        qkey: str = body["custom_attribute_definition"]["key"]
        return qkey

    async def upsert(self, cid: str, key: str, value: Any) -> dict[str, Any]:
        body = await self.ok("POST", f"/v2/customers/{cid}/custom-attributes/{key}",
                             {"custom_attribute": {"value": value}})
        attr: dict[str, Any] = body["custom_attribute"]
        return attr

    async def search_ids(self, filters: list[dict[str, Any]], limit: int = 100) -> list[str]:
        """Every page of SearchCustomers with a custom_attribute filter."""
        ids: list[str] = []
        body: dict[str, Any] = {"limit": limit, "query": {"filter": {"custom_attribute": {"filters": filters}}}}
        while True:
            page = await self.ok("POST", "/v2/customers/search", body)
            ids += [c["id"] for c in page.get("customers", [])]
            if not page.get("cursor"):
                return ids
            body["cursor"] = page["cursor"]


class HookReceiver:
    """A real HTTP endpoint recording every webhook it is sent (body parsed, and each request's headers with its
    raw body, to check signatures), answering 200."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append((dict(request.headers), body))
        self.received.append(orjson.loads(body))
        return web.Response(status=200)

    def types(self) -> list[str]:
        return sorted(e["type"] for e in self.received)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e["type"] == event_type]


@asynccontextmanager
async def receiving() -> AsyncIterator[HookReceiver]:
    """A HookReceiver served on a free local port for the duration of the block."""
    receiver = HookReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
