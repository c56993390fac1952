"""Customer Groups API (CRUD, idempotent create) and Customer Segments API (read-only) handlers."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

from .errors import SquareError, error, invalid_cursor, segment_not_found_error
from .keys import json_response, merchant_of
from .validation import parse_json, parse_limit, reject_unknown

GROUP_FIELDS = frozenset(("id", "name", "created_at", "updated_at"))


def _paginate(items: list[dict[str, Any]], key: str, request: web.Request, kind: str) -> dict[str, Any]:
    limit = parse_limit(request.query.get("limit"), low=1, high=50, default=50)
    offset = 0
    cursor = request.query.get("cursor")
    if cursor:
        try:
            decoded = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            if decoded.get("k") != kind:
                raise ValueError
            offset = int(decoded["o"])
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
            raise invalid_cursor() from None
    page = items[offset:offset + limit]
    out: dict[str, Any] = {}
    if page:
        out[key] = page
    if offset + limit < len(items):
        out["cursor"] = base64.urlsafe_b64encode(orjson.dumps({"k": kind, "o": offset + limit})).decode().rstrip("=")
    return out


def _group_payload(body: Any, raw: bytes) -> str:
    group = body.get("group")
    if not isinstance(group, dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="group")])
    reject_unknown(group, GROUP_FIELDS, raw)
    name = group.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="group.name")])
    return name


async def list_groups(request: web.Request) -> web.Response:
    state = merchant_of(request)
    return json_response(_paginate(list(state.groups.values()), "groups", request, "groups"))


async def create_group(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("idempotency_key", "group")), raw)
    name = _group_payload(body, raw)
    key = body.get("idempotency_key")
    return json_response({"group": state.create_group(name, str(key) if key else None)})


async def retrieve_group(request: web.Request) -> web.Response:
    return json_response({"group": merchant_of(request).get_group(request.match_info["group_id"])})


async def update_group(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("group",)), raw)
    name = _group_payload(body, raw)
    return json_response({"group": state.update_group(request.match_info["group_id"], name)})


async def delete_group(request: web.Request) -> web.Response:
    merchant_of(request).delete_group(request.match_info["group_id"])
    return json_response(b"{}")


async def list_segments(request: web.Request) -> web.Response:
    state = merchant_of(request)
    return json_response(_paginate(list(state.segments.values()), "segments", request, "segments"))


async def retrieve_segment(request: web.Request) -> web.Response:
    state = merchant_of(request)
    sid = request.match_info["segment_id"]
    segment = state.segments.get(sid)
    if segment is None:
        raise segment_not_found_error(sid)
    return json_response({"segment": segment})
