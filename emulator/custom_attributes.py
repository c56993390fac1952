"""Customer Custom Attributes API handlers: definitions and per-customer values, answered from the perspective of the
application every token belongs to (``attribute_store.py`` holds the rules, ``visibility.py`` the keys; the search
filter is ``attribute_filter.py``).

Keys in paths and bodies are as the application sees them: its own definitions by their simple key, other owners'
by their qualified key (``:`` travels literally in paths). Writes fire the ``customer.custom_attribute*`` webhooks.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

from . import errors
from .attribute_store import DEFINITION_FIELDS, AttributeStore
from .errors import SquareError, bad_request, error
from .keys import json_response, merchant_of
from .validation import parse_json, parse_limit, reject_unknown

ATTRIBUTE_FIELDS = frozenset(("key", "value", "version", "visibility", "definition", "updated_at", "created_at"))


def _store(request: web.Request) -> AttributeStore:
    return merchant_of(request).attributes


def _page(items: list[dict[str, Any]], key: str, request: web.Request, kind: str) -> dict[str, Any]:
    limit = parse_limit(request.query.get("limit"), low=1, high=100, default=20)
    offset = 0
    cursor = request.query.get("cursor")
    if cursor:
        try:
            cur = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            if cur.get("k") != kind:
                raise ValueError
            offset = int(cur["o"])
        except (ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError):
            raise errors.invalid_cursor() from None
    out: dict[str, Any] = {}
    page = items[offset:offset + limit]
    if page:
        out[key] = page
    if offset + limit < len(items):
        out["cursor"] = base64.urlsafe_b64encode(orjson.dumps({"k": kind, "o": offset + limit})).decode().rstrip("=")
    return out


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


def _check_version_query(request: web.Request, current: int) -> None:
    """``version`` on a read: Square returns that version or a newer one; a version above the current is 400."""
    raw = request.query.get("version")
    if raw in (None, ""):
        return
    try:
        wanted = int(raw)
    except ValueError:
        raise bad_request("`version` must be an integer.", field="version", code="INVALID_VALUE") from None
    if wanted > current:
        raise bad_request(f"The requested version ({wanted}) is newer than the current version ({current}).",
                          field="version")


def _spec(body: dict[str, Any], field: str, allowed: frozenset[str], raw: bytes) -> dict[str, Any]:
    spec = body.get(field)
    if not isinstance(spec, dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field=field)])
    reject_unknown(spec, allowed, raw)
    return spec


# ---- definitions --------------------------------------------------------------------------------------------
async def list_definitions(request: web.Request) -> web.Response:
    return json_response(_page(_store(request).definitions_view(), "custom_attribute_definitions", request,
                               "definitions"))


async def create_definition(request: web.Request) -> web.Response:
    store = _store(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("custom_attribute_definition", "idempotency_key")), raw)
    spec = _spec(body, "custom_attribute_definition", DEFINITION_FIELDS, raw)
    idem = body.get("idempotency_key")
    qkey = store.create_definition(store.app_id, spec, str(idem) if idem else None)
    return json_response({"custom_attribute_definition": store.definition_view(qkey)})


async def retrieve_definition(request: web.Request) -> web.Response:
    store = _store(request)
    qkey = store.resolve(request.match_info["key"])
    _check_version_query(request, store.definitions[qkey]["version"])
    return json_response({"custom_attribute_definition": store.definition_view(qkey)})


async def update_definition(request: web.Request) -> web.Response:
    store = _store(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("custom_attribute_definition", "idempotency_key")), raw)
    spec = _spec(body, "custom_attribute_definition", DEFINITION_FIELDS, raw)
    key = request.match_info["key"]
    qkey = store.resolve(key)
    store.update_definition(qkey, spec, actor=store.app_id, key=key)
    return json_response({"custom_attribute_definition": store.definition_view(qkey)})


async def delete_definition(request: web.Request) -> web.Response:
    store = _store(request)
    key = request.match_info["key"]
    store.delete_definition(store.resolve(key), actor=store.app_id, key=key)
    return json_response({})


# ---- values -------------------------------------------------------------------------------------------------
def _upsert(store: AttributeStore, cid: str, key: str, spec: Any, raw: bytes) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="custom_attribute")])
    reject_unknown(spec, ATTRIBUTE_FIELDS, raw)
    if not store.has_customer(cid):
        raise errors.customer_not_found_error(cid)
    qkey = store.resolve(key)
    if "value" not in spec:
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="value")])
    value = store.upsert(cid, qkey, spec["value"], spec.get("version"), actor=store.app_id, key=key)
    return store.value_view(qkey, value)


async def upsert_attribute(request: web.Request) -> web.Response:
    store = _store(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("custom_attribute", "idempotency_key")), raw)
    attr = _upsert(store, request.match_info["customer_id"], request.match_info["key"], body.get("custom_attribute"),
                   raw)
    return json_response({"custom_attribute": attr})


def _customer(store: AttributeStore, cid: str) -> str:
    if not store.has_customer(cid):
        raise errors.customer_not_found_error(cid)
    return cid


async def retrieve_attribute(request: web.Request) -> web.Response:
    store = _store(request)
    cid = _customer(store, request.match_info["customer_id"])
    key = request.match_info["key"]
    qkey = store.resolve(key)
    value = store.get_value(cid, qkey, key)
    _check_version_query(request, value.version)
    return json_response({"custom_attribute": store.value_view(qkey, value, _flag(request, "with_definition"))})


async def list_attributes(request: web.Request) -> web.Response:
    """Cheap on purpose (benchmarked at 1,000+ calls/s): only the profile's own values are touched."""
    store = _store(request)
    cid = _customer(store, request.match_info["customer_id"])
    attrs = store.values_view(cid, _flag(request, "with_definitions"))
    return json_response(_page(attrs, "custom_attributes", request, f"attrs:{cid}"))


async def delete_attribute(request: web.Request) -> web.Response:
    store = _store(request)
    cid = _customer(store, request.match_info["customer_id"])
    key = request.match_info["key"]
    store.delete_value(cid, store.resolve(key), actor=store.app_id, key=key)
    return json_response({})


async def bulk_upsert(request: web.Request) -> web.Response:
    store = _store(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("values",)), raw)
    items = body.get("values")
    if not isinstance(items, dict) or not items:
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="values")])
    if len(items) > 25:
        raise SquareError(400, [error("TOO_MANY_MAP_ENTRIES", "`values` must contain at most 25 items.",
                                      field="values")])
    out: dict[str, Any] = {}
    for rid, item in items.items():
        cid = item.get("customer_id") if isinstance(item, dict) else None
        try:
            if not isinstance(item, dict):
                raise bad_request("Expected an object.")
            spec = item.get("custom_attribute") or {}
            attr = _upsert(store, str(cid), str(spec.get("key", "")), spec, raw)
            out[rid] = {"customer_id": cid, "custom_attribute": attr}
        except SquareError as exc:
            out[rid] = {"customer_id": cid, "errors": exc.errors} if cid else {"errors": exc.errors}
    return json_response({"values": out})
