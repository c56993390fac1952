"""Events API (SearchEvents over customer events) and RetrieveMerchant (``/v2/merchants/me``)."""

from __future__ import annotations

from aiohttp import web

from . import clock
from .app import json_response, merchant_of
from .config import CUSTOMER_EVENT_TYPES
from .errors import SquareError, error
from .events import search_events
from .validation import parse_json


async def search(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    now = clock.now()
    state.events.prune(now)
    result = search_events(state.events, state.merchant_id, body, raw, now)
    if not state.events_enabled:
        return json_response({})  # UNCONFIRMED: a disabled seller's events are not searchable
    return json_response(result)


async def list_event_types(request: web.Request) -> web.Response:
    merchant_of(request)
    return json_response({"event_types": list(CUSTOMER_EVENT_TYPES), "metadata": [
        {"event_type": t, "api_version_introduced": "2021-02-26", "release_status": "PUBLIC"}
        for t in CUSTOMER_EVENT_TYPES]})


async def enable_events(request: web.Request) -> web.Response:
    merchant_of(request).events_enabled = True
    return json_response({})


async def disable_events(request: web.Request) -> web.Response:
    merchant_of(request).events_enabled = False
    return json_response({})


async def retrieve_merchant(request: web.Request) -> web.Response:
    state = merchant_of(request)
    mid = request.match_info["merchant_id"]
    if mid not in ("me", state.merchant_id):
        raise SquareError(403, [error("FORBIDDEN", "You are not authorized to access this merchant.",
                                      category="AUTHENTICATION_ERROR")])
    return json_response({"merchant": {"id": state.merchant_id, "business_name": state.business_name,
                                       "country": "US", "language_code": "en-US", "currency": "USD",
                                       "status": "ACTIVE"}})


def register(app: web.Application) -> None:
    app.router.add_post("/v2/events", search, name="SearchEvents")
    app.router.add_get("/v2/events/types", list_event_types, name="ListEventTypes")
    app.router.add_put("/v2/events/enable", enable_events, name="EnableEvents")
    app.router.add_put("/v2/events/disable", disable_events, name="DisableEvents")
    app.router.add_get("/v2/merchants/{merchant_id}", retrieve_merchant, name="RetrieveMerchant")
