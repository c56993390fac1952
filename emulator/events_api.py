"""Events API handlers (SearchEvents over customer and custom attribute events, EnableEvents/DisableEvents,
ListEventTypes) and RetrieveMerchant (``/v2/merchants/me``). Authentication (application token, OAuth refusal) is
``Emulator.authenticate``."""

from __future__ import annotations

from aiohttp import web

from . import clock
from .config import ATTRIBUTE_EVENT_TYPES, CUSTOMER_EVENT_TYPES
from .errors import SquareError, error
from .events import EventLog, search_events
from .keys import EMULATOR, json_response, merchant_of, principal_of
from .validation import parse_json


async def search(request: web.Request) -> web.Response:
    """A seller's personal token sees its own seller's events; the application token every seller's
    (narrowed by ``query.filter.merchant_ids``). Only events that occurred while enabled are returned."""
    principal = principal_of(request)
    raw = await request.read()
    body = parse_json(raw)
    now = clock.now()
    sources: list[tuple[str, EventLog]]
    if principal.merchant is None:
        sources = [(mid, st.events) for mid, st in request.app[EMULATOR].merchants.items()]
    else:
        sources = [(principal.merchant.merchant_id, principal.merchant.events)]
    for _, log in sources:
        log.prune(now)
    return json_response(search_events(sources, body, raw, now))


async def list_event_types(request: web.Request) -> web.Response:
    introduced = {**dict.fromkeys(CUSTOMER_EVENT_TYPES, "2021-02-26"),
                  **dict.fromkeys(ATTRIBUTE_EVENT_TYPES, "2022-08-17")}
    return json_response({"event_types": list(introduced), "metadata": [
        {"event_type": t, "api_version_introduced": since, "release_status": "PUBLIC"}
        for t, since in introduced.items()]})


def _switch(request: web.Request, enabled: bool) -> web.Response:
    principal = principal_of(request)
    if principal.merchant is None:
        request.app[EMULATOR].set_application_events(enabled)
    else:
        principal.merchant.set_events_enabled(enabled, "seller")
    return json_response({})


async def enable_events(request: web.Request) -> web.Response:
    return _switch(request, True)


async def disable_events(request: web.Request) -> web.Response:
    return _switch(request, False)


async def retrieve_merchant(request: web.Request) -> web.Response:
    state = merchant_of(request)
    mid = request.match_info["merchant_id"]
    if mid not in ("me", state.merchant_id):
        raise SquareError(403, [error("FORBIDDEN", "You are not authorized to access this merchant.",
                                      category="AUTHENTICATION_ERROR")])
    return json_response({"merchant": {"id": state.merchant_id, "business_name": state.business_name,
                                       "country": "US", "language_code": "en-US", "currency": "USD",
                                       "status": "ACTIVE"}})
