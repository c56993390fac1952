"""Events API (SearchEvents over customer events) and RetrieveMerchant (``/v2/merchants/me``)."""

from __future__ import annotations

from aiohttp import web

from . import clock
from .app import json_response, merchant_of
from .errors import SquareError, error
from .events import search_events
from .validation import parse_json


async def search(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    now = clock.now()
    state.events.prune(now)
    return json_response(search_events(state.events, state.merchant_id, body, raw, now))


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
    app.router.add_get("/v2/merchants/{merchant_id}", retrieve_merchant, name="RetrieveMerchant")
