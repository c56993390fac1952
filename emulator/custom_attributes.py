"""Customer Custom Attributes API: definitions and per-customer values (their search filter is in ``search.py``).

Kept apart from the core Customers API because the mirror does not sync custom attributes; the emulator
serves them so that every non-deprecated operation of the spec answers with a valid body. Changes to
custom attributes never bump the customer's ``version`` and (UNCONFIRMED simplification) fire no
``customer.custom_attribute.*`` events.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
from aiohttp import web

from . import clock, errors, validation
from .errors import SquareError, bad_request, error
from .keys import json_response, merchant_of
from .state import MerchantState
from .validation import normalise_birthday, parse_json, parse_limit, reject_unknown

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,60}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
VISIBILITIES = ("VISIBILITY_HIDDEN", "VISIBILITY_READ_ONLY", "VISIBILITY_READ_WRITE_VALUES")
DEFINITION_FIELDS = frozenset(("key", "schema", "name", "description", "visibility", "version", "updated_at",
                               "created_at"))
ATTRIBUTE_FIELDS = frozenset(("key", "value", "version", "visibility", "definition", "updated_at", "created_at"))


def _schema_type(definition: dict[str, Any]) -> str:
    ref = str((definition.get("schema") or {}).get("$ref", ""))
    return ref.rsplit(".", 1)[-1] if "#" in ref else ""


def check_value(definition: dict[str, Any], value: Any) -> None:
    """Validate a value against the definition's schema type (common Square schema names)."""
    kind = _schema_type(definition)
    ok = True
    if kind == "String":
        ok = isinstance(value, str) and len(value) <= 2000
    elif kind == "Email":
        ok = isinstance(value, str) and bool(validation.EMAIL_PATTERN.match(value))
    elif kind == "PhoneNumber":
        ok = isinstance(value, str) and validation.valid_phone(value)
    elif kind == "Number":
        ok = isinstance(value, str) and bool(_NUMBER.match(value))
    elif kind == "Boolean":
        ok = isinstance(value, bool)
    elif kind == "Date":
        ok = isinstance(value, str) and len(value) == 10 and normalise_birthday(value) == value
    elif kind == "Selection":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == "Address":
        ok = isinstance(value, dict)
    if not ok:
        raise SquareError(400, [error("INVALID_VALUE", f"Invalid value for custom attribute `{definition['key']}` "
                                      f"of type {kind or 'unknown'}.", field="custom_attribute.value")])


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


def _definition(state: MerchantState, key: str) -> dict[str, Any]:
    definition = state.ca_definitions.get(key)
    if definition is None:
        raise SquareError(404, [error("NOT_FOUND", f"Custom attribute definition with key `{key}` not found.")])
    return definition


def _stale(state: MerchantState, current: int, given: Any) -> None:
    if given is not None and given != current:
        raise SquareError(state.knobs.stale_version_status, [error(
            state.knobs.stale_version_code, f"The version ({given}) does not match the current version ({current}).",
            field="version")])


async def list_definitions(request: web.Request) -> web.Response:
    state = merchant_of(request)
    return json_response(_page(list(state.ca_definitions.values()), "custom_attribute_definitions", request,
                               "definitions"))


async def create_definition(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("custom_attribute_definition", "idempotency_key")), raw)
    key_idem = body.get("idempotency_key")
    if key_idem and key_idem in state.ca_idempotency:
        return json_response({"custom_attribute_definition": state.ca_definitions.get(state.ca_idempotency[key_idem])})
    spec = body.get("custom_attribute_definition")
    if not isinstance(spec, dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set",
                                      field="custom_attribute_definition")])
    reject_unknown(spec, DEFINITION_FIELDS, raw)
    key = spec.get("key")
    if not isinstance(key, str) or not _KEY.match(key):
        raise bad_request("`key` must be 1-60 characters of A-Z, a-z, 0-9, _ or -.", field="key",
                          code="INVALID_VALUE")
    if key in state.ca_definitions:
        raise SquareError(409, [error("CONFLICT", f"A custom attribute definition with key `{key}` already exists.",
                                      field="key")])
    if not isinstance(spec.get("schema"), dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="schema")])
    visibility = spec.get("visibility") or "VISIBILITY_HIDDEN"
    if visibility not in VISIBILITIES:
        raise bad_request(f"`{visibility}` is not a valid enum value for `visibility`.", code="INVALID_ENUM_VALUE")
    ts = clock.now()
    definition = {"key": key, "schema": spec["schema"], "name": spec.get("name"),
                  "description": spec.get("description"), "visibility": visibility, "version": 1,
                  "updated_at": clock.rfc3339_ms(ts), "created_at": clock.rfc3339_ms(ts)}
    definition = {k: v for k, v in definition.items() if v is not None}
    state.ca_definitions[key] = definition
    if key_idem:
        state.ca_idempotency[str(key_idem)] = key
    return json_response({"custom_attribute_definition": definition})


async def retrieve_definition(request: web.Request) -> web.Response:
    state = merchant_of(request)
    return json_response({"custom_attribute_definition": _definition(state, request.match_info["key"])})


async def update_definition(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("custom_attribute_definition", "idempotency_key")), raw)
    spec = body.get("custom_attribute_definition")
    if not isinstance(spec, dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set",
                                      field="custom_attribute_definition")])
    reject_unknown(spec, DEFINITION_FIELDS, raw)
    current = dict(_definition(state, request.match_info["key"]))
    _stale(state, current["version"], spec.get("version"))
    for field in ("name", "description", "visibility", "schema"):
        if spec.get(field) is not None:
            current[field] = spec[field]
    current["version"] += 1
    current["updated_at"] = clock.rfc3339_ms(clock.now())
    state.ca_definitions[current["key"]] = current
    return json_response({"custom_attribute_definition": current})


async def delete_definition(request: web.Request) -> web.Response:
    state = merchant_of(request)
    key = request.match_info["key"]
    _definition(state, key)
    del state.ca_definitions[key]
    for values in state.ca_values.values():
        values.pop(key, None)
    return json_response({})


def _customer(state: MerchantState, cid: str) -> str:
    if cid not in state.customers:
        raise errors.customer_not_found_error(cid)
    return cid


def _with_definition(state: MerchantState, attr: dict[str, Any], include: bool) -> dict[str, Any]:
    if include and attr["key"] in state.ca_definitions:
        return {**attr, "definition": state.ca_definitions[attr["key"]]}
    return attr


def upsert(state: MerchantState, cid: str, key: str, spec: Any, raw: bytes) -> dict[str, Any]:
    _customer(state, cid)
    if not isinstance(spec, dict):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="custom_attribute")])
    reject_unknown(spec, ATTRIBUTE_FIELDS, raw)
    definition = _definition(state, key)
    if "value" not in spec:
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="value")])
    check_value(definition, spec["value"])
    values = state.ca_values.setdefault(cid, {})
    current = values.get(key)
    ts = clock.rfc3339_ms(clock.now())
    if current is None:
        _stale(state, 0, spec.get("version") if spec.get("version") not in (None, 0) else None)
        attr = {"key": key, "value": spec["value"], "version": 1, "visibility": definition["visibility"],
                "updated_at": ts, "created_at": ts}
    else:
        _stale(state, current["version"], spec.get("version"))
        attr = {**current, "value": spec["value"], "version": current["version"] + 1, "updated_at": ts}
    values[key] = attr
    return attr


async def upsert_attribute(request: web.Request) -> web.Response:
    state = merchant_of(request)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, frozenset(("custom_attribute", "idempotency_key")), raw)
    attr = upsert(state, request.match_info["customer_id"], request.match_info["key"],
                  body.get("custom_attribute"), raw)
    return json_response({"custom_attribute": attr})


async def retrieve_attribute(request: web.Request) -> web.Response:
    state = merchant_of(request)
    cid = _customer(state, request.match_info["customer_id"])
    key = request.match_info["key"]
    _definition(state, key)
    attr = state.ca_values.get(cid, {}).get(key)
    if attr is None:
        raise SquareError(404, [error("NOT_FOUND", f"Custom attribute with key `{key}` not found for customer "
                                      f"`{cid}`.")])
    include = request.query.get("with_definition", "false").lower() == "true"
    return json_response({"custom_attribute": _with_definition(state, attr, include)})


async def list_attributes(request: web.Request) -> web.Response:
    state = merchant_of(request)
    cid = _customer(state, request.match_info["customer_id"])
    include = request.query.get("with_definitions", "false").lower() == "true"
    attrs = [_with_definition(state, a, include) for a in state.ca_values.get(cid, {}).values()]
    return json_response(_page(attrs, "custom_attributes", request, f"attrs:{cid}"))


async def delete_attribute(request: web.Request) -> web.Response:
    state = merchant_of(request)
    cid = _customer(state, request.match_info["customer_id"])
    key = request.match_info["key"]
    _definition(state, key)
    if state.ca_values.get(cid, {}).pop(key, None) is None:
        raise SquareError(404, [error("NOT_FOUND", f"Custom attribute with key `{key}` not found for customer "
                                      f"`{cid}`.")])
    return json_response({})


async def bulk_upsert(request: web.Request) -> web.Response:
    state = merchant_of(request)
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
            attr = upsert(state, str(cid), str(spec.get("key", "")), spec, raw)
            out[rid] = {"customer_id": cid, "custom_attribute": attr}
        except SquareError as exc:
            out[rid] = {"customer_id": cid, "errors": exc.errors} if cid else {"errors": exc.errors}
    return json_response({"values": out})
