"""``run_emulator``: a real emulator server on a real port for tests, with admin helpers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from .app import create_app
from .config import EmulatorConfig
from .emulator import Emulator
from .keys import EMULATOR


class ManualClock:
    """A stand-in for :func:`emulator.clock.now` that moves only when the test says so.

    ``monkeypatch.setattr(emulator.clock, "now", ManualClock())``: index lag and cursor expiry (and every
    timestamp the emulator writes) then follow :meth:`advance`, so a test lets a lag pass without sleeping
    through it, and nothing passes early on a slow machine.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class EmulatorHandle:
    """What tests hold: addresses, the default seller, and async admin helpers."""

    def __init__(self, app: web.Application, base_url: str, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.base_url = base_url
        self._session = session
        emulator = self.emulator
        first = next(iter(emulator.merchants.values()))
        self.merchant_id = first.merchant_id
        self.token = first.token

    @property
    def emulator(self) -> Emulator:
        return self.app[EMULATOR]

    @property
    def sellers(self) -> dict[str, str]:
        return {mid: st.token for mid, st in self.emulator.merchants.items()}

    @property
    def application_token(self) -> str | None:
        """The application's personal access token (Events API only), if one is set."""
        return self.emulator.application_token

    async def admin(self, method: str, path: str, json: Any = None) -> Any:
        url = f"{self.base_url}/_emulator/{path.lstrip('/')}"
        async with self._session.request(method, url, json=json) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"admin {method} {path} -> {resp.status}: {body}")
            return body

    async def truth(self, merchant_id: str | None = None) -> dict[str, Any]:
        mid = merchant_id or self.merchant_id
        result: dict[str, Any] = await self.admin("GET", f"state?merchant_id={mid}")
        return result

    async def seed(self, customers: int, merchant_id: str | None = None, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("POST", "seed", {"merchant_id": merchant_id or self.merchant_id,
                                                                   "customers": customers, **kw})
        return result

    async def merge(self, customer_ids: list[str], merchant_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin(
            "POST", "merge", {"merchant_id": merchant_id or self.merchant_id, "customer_ids": customer_ids})
        return result

    async def define_custom_attribute(self, definition: dict[str, Any], owner: str | None = None,
                                      merchant_id: str | None = None) -> str:
        """Create a custom attribute definition as ``owner`` (an application ID, ``"square"`` for a Dashboard field,
        None for the mirror's application); returns its qualified key."""
        body: dict[str, Any] = {"merchant_id": merchant_id or self.merchant_id, "definition": definition}
        if owner is not None:
            body["owner"] = owner
        result: dict[str, Any] = await self.admin("POST", "custom-attribute-definitions", body)
        key: str = result["custom_attribute_definition"]["key"]
        return key

    async def set_custom_attribute(self, customer_id: str, key: str, value: Any, merchant_id: str | None = None,
                                   version: int | None = None) -> dict[str, Any]:
        """Set a value as the definition's owner (``key`` qualified, or the mirror's application's simple key)."""
        body: dict[str, Any] = {"merchant_id": merchant_id or self.merchant_id, "value": value}
        if version is not None:
            body["version"] = version
        result: dict[str, Any] = await self.admin("PUT", f"customers/{customer_id}/custom-attributes/{key}", body)
        return result

    async def delete_custom_attribute(self, customer_id: str, key: str, merchant_id: str | None = None) -> None:
        mid = merchant_id or self.merchant_id
        await self.admin("DELETE", f"customers/{customer_id}/custom-attributes/{key}?merchant_id={mid}")

    async def set_faults(self, **knobs: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("PUT", "faults", knobs)
        return result

    async def subscribe(self, url: str, signature_key: str, notification_url: str | None = None,
                        merchant_id: str | None = None, event_types: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "signature_key": signature_key}
        if notification_url:
            body["notification_url"] = notification_url
        if merchant_id:
            body["merchant_id"] = merchant_id
        if event_types:
            body["event_types"] = event_types
        result: dict[str, Any] = await self.admin("POST", "subscriptions", body)
        return result

    async def drain_webhooks(self, timeout: float = 10.0) -> bool:
        return await self.emulator.webhooks.drain(timeout)

    async def authorize(self, merchant_id: str | None = None, *,
                        scope: str | None = "CUSTOMERS_READ MERCHANT_PROFILE_READ", state: str | None = None,
                        redirect_uri: str | None = "https://mirror.example/oauth/callback",
                        code_challenge: str | None = None, approve: bool | None = None) -> dict[str, str]:
        """The seller ``merchant_id`` answers the authorize page (both default to the next queued admin approval,
        else the first seller approving; a new merchant is created): the query of the redirect (``code``,
        ``response_type``, ``state``; or ``error``, ``error_description``, ``state``)."""
        params = {"client_id": self.emulator.application_id}
        if approve is not None:
            params["emulator_decision"] = "approve" if approve else "deny"
        for name, value in (("scope", scope), ("state", state), ("redirect_uri", redirect_uri),
                            ("code_challenge", code_challenge), ("emulator_merchant_id", merchant_id)):
            if value is not None:
                params[name] = value
        async with self._session.get(f"{self.base_url}/oauth2/authorize", params=params,
                                     allow_redirects=False) as resp:
            if resp.status != 302:
                raise RuntimeError(f"authorize -> {resp.status}: {await resp.text()}")
            return dict(URL(resp.headers["Location"]).query)

    async def obtain_token(self, **body: Any) -> tuple[int, dict[str, Any]]:
        """``POST /oauth2/token`` with ``client_id`` filled in: (status, body)."""
        async with self._session.post(f"{self.base_url}/oauth2/token",
                                      json={"client_id": self.emulator.application_id, **body}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def connect_seller(self, merchant_id: str | None = None, *,
                             scope: str = "CUSTOMERS_READ MERCHANT_PROFILE_READ",
                             short_lived: bool = False) -> dict[str, Any]:
        """The code flow end to end (authorize, then ObtainToken with the client secret): ObtainToken's body."""
        redirect = "https://mirror.example/oauth/callback"
        query = await self.authorize(merchant_id, scope=scope, redirect_uri=redirect)
        status, body = await self.obtain_token(grant_type="authorization_code", code=query["code"],
                                               client_secret=self.emulator.application_secret, redirect_uri=redirect,
                                               short_lived=short_lived)
        if status != 200:
            raise RuntimeError(f"ObtainToken -> {status}: {body}")
        return body


@asynccontextmanager
async def run_emulator(config: EmulatorConfig | None = None, *, host: str = "127.0.0.1",
                       port: int = 0) -> AsyncIterator[EmulatorHandle]:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server
    actual = port
    if server is not None and getattr(server, "sockets", None):
        actual = server.sockets[0].getsockname()[1]
    session = aiohttp.ClientSession()
    try:
        yield EmulatorHandle(app, f"http://{host}:{actual}", session)
    finally:
        await session.close()
        await runner.cleanup()
