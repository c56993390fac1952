"""Admin calls for OAuth (``/_emulator/oauth/...``, ``/_emulator/sellers/{M}/revoke-authorization``) and the clock:
what the seller does in the Dashboard, and the fault switches that expire or invalidate tokens."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import clock
from .emulator import REVOKER_TYPES
from .errors import bad_request
from .keys import EMULATOR, json_response
from .validation import parse_json


async def _body(request: web.Request) -> dict[str, Any]:
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise bad_request("Expected a JSON object.")
    return body


async def next_approval(request: web.Request) -> web.Response:
    """Queue the answer of the next authorize request: ``{merchant_id?, approve?: true}`` (merchant omitted: the
    first seller; a merchant that does not exist is created when it approves)."""
    body = await _body(request)
    emu = request.app[EMULATOR]
    mid = body.get("merchant_id")
    if mid is not None and (not isinstance(mid, str) or not mid):
        raise bad_request("`merchant_id` must be a non-empty string.", "merchant_id")
    emu.approvals.append((mid, bool(body.get("approve", True))))
    return json_response({"pending": [{"merchant_id": m, "approve": a} for m, a in emu.approvals]})


async def dump(request: web.Request) -> web.Response:
    """Every grant (with its access tokens) and code, optionally of one seller (``?merchant_id=``)."""
    emu = request.app[EMULATOR]
    return json_response(emu.oauth.dump(request.query.get("merchant_id")) | {
        "revoked_static_tokens": emu.revoked_tokens,
        "pending_approvals": [{"merchant_id": m, "approve": a} for m, a in emu.approvals]})


async def expire(request: web.Request) -> web.Response:
    """Fault switch: the current OAuth access tokens of ``merchant_id`` (omitted: every seller) expire now."""
    body = await _body(request)
    emu = request.app[EMULATOR]
    mid = body.get("merchant_id")
    if mid is not None:
        emu.merchant(str(mid))
    return json_response({"expired": emu.oauth.expire_now(str(mid) if mid is not None else None)})


async def invalidate_refresh(request: web.Request) -> web.Response:
    """Fault switch: the seller's refresh tokens fail for good from now on (its access tokens keep working)."""
    body = await _body(request)
    emu = request.app[EMULATOR]
    if not body.get("merchant_id"):
        raise bad_request("`merchant_id` is required.", "merchant_id")
    state = emu.merchant(str(body["merchant_id"]))
    return json_response({"invalidated": emu.oauth.invalidate_refresh(state.merchant_id)})


async def revoke_authorization(request: web.Request) -> web.Response:
    """The seller (or Square) revokes the application in the Dashboard: like RevokeToken by merchant, with
    ``revoker_type`` MERCHANT (default) or SQUARE."""
    body = await _body(request)
    revoker = str(body.get("revoker_type", "MERCHANT"))
    if revoker not in REVOKER_TYPES:
        raise bad_request(f"`revoker_type` must be one of {', '.join(REVOKER_TYPES)}.", "revoker_type")
    emu = request.app[EMULATOR]
    mid = request.match_info["merchant_id"]
    return json_response({"merchant_id": mid, "events": emu.revoke_authorization(mid, revoker)})


async def get_clock(request: web.Request) -> web.Response:
    return json_response({"now": clock.rfc3339_ms(clock.now())})


async def advance_clock(request: web.Request) -> web.Response:
    """``{seconds}``: move the emulator's clock forward (token and code expiry, index lag, cursor expiry)."""
    body = await _body(request)
    seconds = body.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise bad_request("`seconds` must be a number >= 0.", "seconds")
    clock.advance(float(seconds))
    return json_response({"now": clock.rfc3339_ms(clock.now())})
