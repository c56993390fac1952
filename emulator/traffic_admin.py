"""Admin calls for the request counts (``/_emulator/requests``): what reached the emulator, per seller.

A benchmark reads them to judge "no seller over its budget" from the server's side (``traffic.py`` says why), and
clears them at the start of the window it measures, so the set-up traffic (a backfill at full speed) is left out.
"""

from __future__ import annotations

from aiohttp import web

from .keys import EMULATOR, json_response


async def counts(request: web.Request) -> web.Response:
    """``{"since", "seconds", "merchants": {key: {"total", "429", "max_per_second", "max_second",
    "by_operation"}}}``; ``?merchant_id=M`` keeps that key only (absent from ``merchants`` if it sent nothing)."""
    body = request.app[EMULATOR].requests.to_json()
    merchant_id = request.query.get("merchant_id")
    if merchant_id is not None:
        body["merchants"] = {k: v for k, v in body["merchants"].items() if k == merchant_id}
    return json_response(body)


async def reset(request: web.Request) -> web.Response:
    """Start counting afresh (the sellers, their state and the rate limiter's buckets are untouched)."""
    requests = request.app[EMULATOR].requests
    requests.reset()
    return json_response(requests.to_json())
