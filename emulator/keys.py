"""What every handler shares: the application and request keys, and Square's JSON response.

A leaf for the handler modules: it imports the domain (``Emulator``, ``MerchantState``) and nothing that
imports a handler, so nothing imported from here can lead back to a handler or to ``app``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .emulator import Emulator, Principal
from .state import MerchantState

JSON_HEADERS = {"Content-Type": "application/json", "Square-Version": "2025-08-20"}

EMULATOR: web.AppKey[Emulator] = web.AppKey("emulator", Emulator)
MERCHANT_KEY: web.RequestKey[MerchantState] = web.RequestKey("square_merchant", MerchantState)
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("square_principal", Principal)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(body=raw, status=status, headers={**JSON_HEADERS, **(headers or {})})


def merchant_of(request: web.Request) -> MerchantState:
    """The seller a /v2 request authenticated as (set by ``app.square_middleware``)."""
    return request[MERCHANT_KEY]


def principal_of(request: web.Request) -> Principal:
    """The caller of a /v2 request: a seller or the application (set by ``app.square_middleware``)."""
    return request[PRINCIPAL_KEY]
