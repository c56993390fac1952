"""Admin API for custom attributes (``/_emulator/...``): what other applications and the seller's Dashboard do.

Definitions and values are addressed by qualified key (``{owner}:{key}``, ``square:{uuid}``); a simple key means the
application's own. These calls act as the owner (no permission checks) and fire the same webhooks as the public API,
as the application would receive them (nothing for another owner's HIDDEN definitions).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .attribute_store import DEFINITION_FIELDS, AttributeStore
from .errors import bad_request
from .keys import EMULATOR, json_response
from .state import MerchantState
from .validation import parse_json, reject_unknown
from .visibility import internal_key, visible

_OWNER = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


async def _body(request: web.Request) -> tuple[dict[str, Any], bytes]:
    raw = await request.read()
    body = parse_json(raw) if raw else {}
    if not isinstance(body, dict):
        raise bad_request("Expected a JSON object.")
    return body, raw


def _state(request: web.Request, body: dict[str, Any] | None = None) -> MerchantState:
    mid = (body or {}).get("merchant_id") or request.query.get("merchant_id")
    return request.app[EMULATOR].merchant(mid)


def _key(store: AttributeStore, request: web.Request) -> str:
    return internal_key(request.match_info["key"], store.app_id)


def _definition_json(store: AttributeStore, qkey: str) -> dict[str, Any]:
    definition = store.definitions[qkey]
    return {"custom_attribute_definition": definition, "owner": qkey.rsplit(":", 1)[0],
            "visible_to_application": visible(definition["visibility"], qkey, store.app_id)}


async def list_definitions(request: web.Request) -> web.Response:
    """Every owner's definitions, HIDDEN ones included, by qualified key."""
    return json_response({"custom_attribute_definitions": dict(_state(request).attributes.definitions)})


async def create_definition(request: web.Request) -> web.Response:
    body, raw = await _body(request)
    reject_unknown(body, frozenset(("merchant_id", "owner", "definition", "idempotency_key")), raw)
    store = _state(request, body).attributes
    owner = body.get("owner") or store.app_id
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise bad_request("`owner` must be an application ID or \"square\".", field="owner")
    spec = body.get("definition")
    if not isinstance(spec, dict):
        raise bad_request("`definition` is required.", field="definition")
    reject_unknown(spec, DEFINITION_FIELDS, raw)
    idem = body.get("idempotency_key")
    qkey = store.create_definition(owner, spec, str(idem) if idem else None)
    return json_response(_definition_json(store, qkey))


async def update_definition(request: web.Request) -> web.Response:
    body, raw = await _body(request)
    reject_unknown(body, frozenset(("merchant_id", "definition")), raw)
    store = _state(request, body).attributes
    spec = body.get("definition")
    if not isinstance(spec, dict):
        raise bad_request("`definition` is required.", field="definition")
    reject_unknown(spec, DEFINITION_FIELDS, raw)
    qkey = _key(store, request)
    store.update_definition(qkey, spec, actor=None)
    return json_response(_definition_json(store, qkey))


async def delete_definition(request: web.Request) -> web.Response:
    store = _state(request).attributes
    store.delete_definition(_key(store, request), actor=None)
    return json_response({})


async def set_value(request: web.Request) -> web.Response:
    body, raw = await _body(request)
    reject_unknown(body, frozenset(("merchant_id", "value", "version")), raw)
    if "value" not in body:
        raise bad_request("`value` is required.", field="value")
    store = _state(request, body).attributes
    qkey = _key(store, request)
    value = store.upsert(request.match_info["customer_id"], qkey, body["value"], body.get("version"), actor=None)
    return json_response({"custom_attribute": value.render(qkey, store.definitions[qkey]["visibility"])})


async def delete_value(request: web.Request) -> web.Response:
    store = _state(request).attributes
    store.delete_value(request.match_info["customer_id"], _key(store, request), actor=None)
    return json_response({})
