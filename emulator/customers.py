"""Customers API handlers (every non-deprecated operation of the spec); their routes are in ``routes.py``."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

from .attribute_filter import attribute_predicates
from .errors import SquareError, bad_request, customer_not_found, error
from .keys import EMULATOR, json_response, merchant_of
from .records import CustomerRec
from .search import EmptyResult, compile_filter
from .state import MerchantState
from .validation import (
    CREATE_FIELDS,
    CUSTOMER_INPUT_FIELDS,
    UPDATE_FIELDS,
    parse_json,
    parse_limit,
    reject_unknown,
    validate_customer_fields,
)

SORT_FIELDS = ("DEFAULT", "CREATED_AT")
SORT_ORDERS = ("ASC", "DESC")
EMPTY = b"{}"


def _enum(value: Any, allowed: tuple[str, ...], field: str, default: str) -> str:
    if value is None or value == "":
        return default
    if value not in allowed:
        raise SquareError(400, [error("INVALID_ENUM_VALUE", f"`{value}` is not a valid enum value for `{field}`.",
                                      field=field)])
    return str(value)


def _page_body(recs: list[CustomerRec], cursor: str | None, count: int | None) -> bytes:
    parts: list[bytes] = []
    if recs:
        parts.append(b'"customers":[' + b",".join(r.raw for r in recs) + b"]")
    if cursor:
        parts.append(b'"cursor":' + orjson.dumps(cursor))
    if count is not None:
        parts.append(b'"count":' + str(count).encode())
    return b"{" + b",".join(parts) + b"}"


def _customer_body(rec: CustomerRec) -> bytes:
    return b'{"customer":' + rec.raw + b"}"


async def _body(request: web.Request) -> tuple[Any, bytes]:
    raw = await request.read()
    return parse_json(raw), raw


async def list_customers(request: web.Request) -> web.Response:
    state = merchant_of(request)
    q = request.query
    limit = parse_limit(q.get("limit"), low=1, high=100, default=100)
    sort_field = _enum(q.get("sort_field"), SORT_FIELDS, "sort_field", "DEFAULT")
    order = _enum(q.get("sort_order"), SORT_ORDERS, "sort_order", "ASC")
    count = q.get("count", "false").lower() == "true"
    recs, cursor, total = state.page(sort_field=sort_field, order=order, limit=limit, cursor=q.get("cursor"),
                                     fingerprint=f"list:{sort_field}:{order}", predicates=None, count=count)
    return json_response(_page_body(recs, cursor, total))


async def search_customers(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    reject_unknown(body, frozenset(("cursor", "limit", "query", "count")), raw)
    limit = parse_limit(body.get("limit"), low=1, high=100, default=100)
    query = body.get("query") or {}
    reject_unknown(query, frozenset(("filter", "sort")), raw)
    sort = query.get("sort") or {}
    reject_unknown(sort, frozenset(("field", "order")), raw)
    sort_field = _enum(sort.get("field"), SORT_FIELDS, "query.sort.field", "DEFAULT")
    order = _enum(sort.get("order"), SORT_ORDERS, "query.sort.order", "ASC")
    count = bool(body.get("count", False))
    try:
        predicates = compile_filter(
            query.get("filter"), state.groups, state.segments, raw,
            custom_attribute=lambda spec: attribute_predicates(spec, state.attributes.filter_key, state.index.attrs,
                                                               raw))
    except EmptyResult:
        return json_response(b'{"count":0}' if count else EMPTY)
    fingerprint = "search:" + hashlib.sha1(orjson.dumps(query, option=orjson.OPT_SORT_KEYS),
                                           usedforsecurity=False).hexdigest()[:20]
    recs, cursor, total = state.page(sort_field=sort_field, order=order, limit=limit, cursor=body.get("cursor"),
                                     fingerprint=fingerprint, predicates=predicates, count=count)
    return json_response(_page_body(recs, cursor, total))


def _create_one(state: MerchantState, body: dict[str, Any], raw: bytes, key: str | None) -> bytes:
    fields = validate_customer_fields({k: v for k, v in body.items() if k != "idempotency_key"}, raw)
    rec, replay = state.create_customer(fields, idempotency_key=key)
    return replay if replay is not None else _customer_body(rec)


async def create_customer(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    reject_unknown(body, CREATE_FIELDS, raw)
    key = body.get("idempotency_key")
    return json_response(_create_one(state, body, raw, str(key) if key else None))


async def retrieve_customer(request: web.Request) -> web.Response:
    state = merchant_of(request)
    return json_response(_customer_body(state.get(request.match_info["customer_id"])))


def _update_one(state: MerchantState, cid: str, body: dict[str, Any], raw: bytes, clear_null: bool) -> CustomerRec:
    reject_unknown(body, UPDATE_FIELDS, raw)
    fields = validate_customer_fields({k: v for k, v in body.items() if k != "version"}, raw)
    if not fields:
        raise bad_request("The request must include at least one customer field to update.")
    return state.update_customer(cid, fields, body.get("version"), clear_null=clear_null,
                                 allow_hide=state.knobs.update_can_hide_profile)


def _clear_null(request: web.Request) -> bool:
    knobs = request.app[EMULATOR].knobs
    return (not knobs.require_clear_null_header) or request.headers.get("X-Clear-Null", "").lower() == "true"


async def update_customer(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    rec = _update_one(state, request.match_info["customer_id"], body, raw, _clear_null(request))
    return json_response(_customer_body(rec))


async def delete_customer(request: web.Request) -> web.Response:
    state = merchant_of(request)
    version: int | None = None
    if request.query.get("version") not in (None, ""):
        try:
            version = int(request.query["version"])
        except ValueError:
            raise bad_request("`version` must be an integer.", field="version", code="INVALID_VALUE") from None
    state.delete_customer(request.match_info["customer_id"], version)
    return json_response(EMPTY)


def _bulk_size(n: int, field: str, is_map: bool) -> None:
    if n == 0:
        raise SquareError(400, [error("VALUE_EMPTY" if is_map else "ARRAY_EMPTY",
                                      f"`{field}` must contain at least 1 item.", field=field)])
    if n > 100:
        raise SquareError(400, [error("TOO_MANY_MAP_ENTRIES" if is_map else "ARRAY_LENGTH_TOO_LONG",
                                      f"`{field}` must contain at most 100 items.", field=field)])


def _item_errors(exc: SquareError) -> dict[str, Any]:
    return {"errors": exc.errors}


async def bulk_create(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    reject_unknown(body, frozenset(("customers",)), raw)
    items = body.get("customers")
    if not isinstance(items, dict):
        raise SquareError(400, [error("EXPECTED_MAP", "Expected `customers` to be a map.", field="customers")])
    _bulk_size(len(items), "customers", True)
    responses: dict[str, Any] = {}
    for key, item in items.items():
        try:
            reject_unknown(item, CUSTOMER_INPUT_FIELDS, raw)
            responses[key] = orjson.Fragment(_create_one(state, item, raw, f"bulk:{key}"))
        except SquareError as exc:
            responses[key] = _item_errors(exc)
    return json_response({"responses": responses})


async def bulk_update(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    reject_unknown(body, frozenset(("customers",)), raw)
    items = body.get("customers")
    if not isinstance(items, dict):
        raise SquareError(400, [error("EXPECTED_MAP", "Expected `customers` to be a map.", field="customers")])
    _bulk_size(len(items), "customers", True)
    clear_null = _clear_null(request)
    responses: dict[str, Any] = {}
    for cid, item in items.items():
        try:
            rec = _update_one(state, cid, item, raw, clear_null)
            responses[cid] = orjson.Fragment(_customer_body(rec))
        except SquareError as exc:
            responses[cid] = _item_errors(exc)
    return json_response({"responses": responses})


def _ids(body: Any, raw: bytes) -> list[str]:
    reject_unknown(body, frozenset(("customer_ids",)), raw)
    ids = body.get("customer_ids")
    if not isinstance(ids, list):
        raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="customer_ids")])
    _bulk_size(len(ids), "customer_ids", False)
    return [str(i) for i in ids]


async def bulk_retrieve(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    follow = request.app[EMULATOR].knobs.bulk_retrieve_resolves_merges
    responses: dict[str, Any] = {}
    for cid in _ids(body, raw):
        rec = state.resolve(cid) if follow else state.customers.get(cid)
        responses[cid] = orjson.Fragment(_customer_body(rec)) if rec is not None else \
            {"errors": [customer_not_found(cid)]}
    return json_response({"responses": responses})


async def bulk_delete(request: web.Request) -> web.Response:
    state = merchant_of(request)
    body, raw = await _body(request)
    responses: dict[str, Any] = {}
    for cid in _ids(body, raw):
        try:
            state.delete_customer(cid, None)
            responses[cid] = {}
        except SquareError as exc:
            responses[cid] = _item_errors(exc)
    return json_response({"responses": responses})


async def add_group(request: web.Request) -> web.Response:
    state = merchant_of(request)
    state.set_group(request.match_info["customer_id"], request.match_info["group_id"], True)
    return json_response(EMPTY)


async def remove_group(request: web.Request) -> web.Response:
    state = merchant_of(request)
    state.set_group(request.match_info["customer_id"], request.match_info["group_id"], False)
    return json_response(EMPTY)
