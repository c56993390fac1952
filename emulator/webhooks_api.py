"""Webhook Subscriptions API handlers (FACTS-2 C); the application token only (``Emulator.authenticate``).
The subscriptions themselves are ``subscriptions.ApiSubscriptions``."""

from __future__ import annotations

from aiohttp import web

from .keys import EMULATOR, json_response
from .subscriptions import event_types
from .validation import parse_json


async def list_event_types(request: web.Request) -> web.Response:
    return json_response(event_types(request.query.get("api_version")))


async def list_subscriptions(request: web.Request) -> web.Response:
    return json_response(request.app[EMULATOR].api_subscriptions.list(dict(request.query)))


async def create_subscription(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    raw = await request.read()
    return json_response(emu.api_subscriptions.create(parse_json(raw), raw, emu.config.application_api_version))


async def retrieve_subscription(request: web.Request) -> web.Response:
    subs = request.app[EMULATOR].api_subscriptions
    return json_response({"subscription": subs.to_json(subs.get(request.match_info["subscription_id"]),
                                                       with_key=True)})


async def update_subscription(request: web.Request) -> web.Response:
    raw = await request.read()
    return json_response(request.app[EMULATOR].api_subscriptions.update(request.match_info["subscription_id"],
                                                                        parse_json(raw), raw))


async def delete_subscription(request: web.Request) -> web.Response:
    request.app[EMULATOR].api_subscriptions.delete(request.match_info["subscription_id"])
    return json_response({})


async def update_signature_key(request: web.Request) -> web.Response:
    raw = await request.read()
    return json_response(request.app[EMULATOR].api_subscriptions.rotate_key(request.match_info["subscription_id"],
                                                                            parse_json(raw), raw))


async def test_subscription(request: web.Request) -> web.Response:
    """Sends one test event to the subscription's URL now (signed, no retries) and reports what it answered."""
    emu = request.app[EMULATOR]
    subs = emu.api_subscriptions
    sub = subs.get(request.match_info["subscription_id"])
    raw = await request.read()
    _, payload = subs.test_event(sub, parse_json(raw), raw, next(iter(emu.merchants), "MLEMULATOR001"))
    status = await emu.webhooks.send_once(sub, payload)
    return json_response(subs.test_result(payload, status))
