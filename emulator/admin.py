"""Admin API under ``/_emulator/``: what only the Square Dashboard can do, plus test control.

No authentication; JSON in and out. Errors use the Square envelope so clients parse them the same way.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from . import validation
from .config import PERSONAL, TOKEN_KINDS
from .emulator import Emulator, load_snapshot_if_exists, save_snapshot
from .errors import SquareError, bad_request
from .keys import EMULATOR, json_response
from .seeding import seed_merchant
from .state import MerchantState
from .validation import UPDATE_FIELDS, parse_json, reject_unknown


async def _json(request: web.Request) -> dict[str, Any]:
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise bad_request("Expected a JSON object.")
    return body


def _emu(request: web.Request) -> Emulator:
    return request.app[EMULATOR]


def _merchant(request: web.Request, body: dict[str, Any] | None = None) -> MerchantState:
    mid = (body or {}).get("merchant_id") or request.query.get("merchant_id")
    return _emu(request).merchant(mid)


async def reset(request: web.Request) -> web.Response:
    _emu(request).reset()
    return json_response({"ok": True})


async def seed(request: web.Request) -> web.Response:
    body = await _json(request)
    state = _merchant(request, body)
    try:
        result = seed_merchant(state, customers=int(body.get("customers", 0)), groups=body.get("groups"),
                               segments=body.get("segments"), instant_profiles=int(body.get("instant_profiles", 0)),
                               seed=body.get("seed", _emu(request).seed),
                               custom_attributes=body.get("custom_attributes"))
    except (TypeError, ValueError) as exc:
        raise bad_request(str(exc), field="custom_attributes") from None
    return json_response(result)


async def state(request: web.Request) -> web.Response:
    emulator = _emu(request)
    if request.query.get("merchant_id"):
        return json_response(emulator.merchant(request.query["merchant_id"]).dump())
    return json_response({"merchants": {mid: st.dump() for mid, st in emulator.merchants.items()}})


async def merge(request: web.Request) -> web.Response:
    body = await _json(request)
    ids = body.get("customer_ids")
    if not isinstance(ids, list):
        raise bad_request("`customer_ids` must be a list.", field="customer_ids")
    rec = _merchant(request, body).merge([str(i) for i in ids])
    return json_response({"customer": rec.doc})


async def instant_profile(request: web.Request) -> web.Response:
    body = await _json(request)
    rec, _ = _merchant(request, body).create_customer({}, source="INSTANT_PROFILE", require_identity=False)
    return json_response({"customer": rec.doc})


async def create_segment(request: web.Request) -> web.Response:
    body = await _json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("`name` is required.", field="name")
    return json_response({"segment": _merchant(request, body).create_segment(name, body.get("id"))})


async def delete_segment(request: web.Request) -> web.Response:
    _merchant(request).delete_segment(request.match_info["segment_id"])
    return json_response({})


async def segment_member(request: web.Request) -> web.Response:
    member = request.method == "PUT"
    rec = _merchant(request).set_segment(request.match_info["customer_id"], request.match_info["segment_id"], member)
    return json_response({"customer": rec.doc})


async def dashboard_update(request: web.Request) -> web.Response:
    """A change made in the Dashboard/POS: same rules as UpdateCustomer, plus ``preferences``; fires
    ``customer.updated`` and bumps ``version`` like any committed change."""
    body = await _json(request)
    state = _merchant(request, body)
    raw = orjson.dumps(body)
    prefs = body.pop("preferences", None)
    body.pop("merchant_id", None)
    reject_unknown(body, UPDATE_FIELDS, raw)
    fields = validation.validate_customer_fields({k: v for k, v in body.items() if k != "version"}, raw)
    if not fields and prefs is None:
        raise bad_request("Nothing to update.")
    rec = state.update_customer(request.match_info["customer_id"], fields, body.get("version"), clear_null=True,
                                preferences=prefs if isinstance(prefs, dict) else None)
    return json_response({"customer": rec.doc})


async def delete_subscription(request: web.Request) -> web.Response:
    hooks = _emu(request).webhooks
    sid = request.match_info["subscription_id"]
    before = len(hooks.subscriptions)
    hooks.subscriptions = [s for s in hooks.subscriptions if s.id != sid]
    if len(hooks.subscriptions) == before:
        raise SquareError(404, [{"code": "NOT_FOUND", "detail": f"No subscription `{sid}`.",
                                 "category": "INVALID_REQUEST_ERROR"}])
    return json_response({})


async def get_faults(request: web.Request) -> web.Response:
    return json_response(_emu(request).knobs.to_json())


async def put_faults(request: web.Request) -> web.Response:
    body = await _json(request)
    try:
        _emu(request).knobs.merge(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad_request(f"Unknown or invalid knob: {exc}") from None
    if "events_enabled_by_default" in body:
        for state in _emu(request).merchants.values():
            state.apply_default_events(_emu(request).knobs.events_enabled_by_default)
    return json_response(_emu(request).knobs.to_json())


async def add_subscription(request: web.Request) -> web.Response:
    body = await _json(request)
    emulator = _emu(request)
    if not body.get("url") or not body.get("signature_key"):
        raise bad_request("`url` and `signature_key` are required.")
    targets = [body["merchant_id"]] if body.get("merchant_id") else list(emulator.merchants)
    subs = []
    for mid in targets:
        emulator.merchant(mid)
        subs.append(emulator.webhooks.subscribe(mid, body["url"], body["signature_key"],
                                                body.get("notification_url"),
                                                tuple(body["event_types"]) if body.get("event_types") else None))
    return json_response({"subscriptions": [s.to_json() for s in subs]})


async def list_subscriptions(request: web.Request) -> web.Response:
    return json_response({"subscriptions": [s.to_json() for s in _emu(request).webhooks.subscriptions]})


async def deliveries(request: web.Request) -> web.Response:
    return json_response({"deliveries": [d.to_json() for d in _emu(request).webhooks.log]})


async def drain(request: web.Request) -> web.Response:
    timeout = float(request.query.get("timeout", "10"))
    settled = await _emu(request).webhooks.drain(timeout)
    return json_response({"settled": settled, "pending": len(_emu(request).webhooks.tasks)})


def _check_token_free(emulator: Emulator, token: str, merchant_id: str | None) -> None:
    """A token identifies one caller: the application or exactly one seller."""
    if token == emulator.application_token:
        raise bad_request("That token is the application token.", field="token")
    owner = emulator.tokens.get(token)
    if owner is not None and owner != merchant_id:
        raise bad_request(f"That token belongs to seller `{owner}`.", field="token")


def _seller_json(state: MerchantState) -> dict[str, Any]:
    return {"merchant_id": state.merchant_id, "token": state.token or None, "token_kind": state.token_kind,
            "revoked": state.revoked, "events_enabled": state.events_enabled}


async def add_seller(request: web.Request) -> web.Response:
    body = await _json(request)
    if not body.get("merchant_id") or not body.get("token"):
        raise bad_request("`merchant_id` and `token` are required.")
    kind = str(body.get("token_kind") or PERSONAL)
    if kind not in TOKEN_KINDS:
        raise bad_request(f"`token_kind` must be one of {', '.join(TOKEN_KINDS)}.", field="token_kind")
    emulator = _emu(request)
    _check_token_free(emulator, str(body["token"]), str(body["merchant_id"]))
    state = emulator.add_seller(str(body["merchant_id"]), str(body["token"]), kind)
    return json_response(_seller_json(state))


async def revoke(request: web.Request) -> web.Response:
    state = _emu(request).merchant(request.match_info["merchant_id"])
    state.revoked = request.match_info["action"] == "revoke"
    return json_response({"merchant_id": state.merchant_id, "revoked": state.revoked})


async def sellers(request: web.Request) -> web.Response:
    return json_response({"sellers": [_seller_json(s) for s in _emu(request).merchants.values()]})


def _application_json(emulator: Emulator) -> dict[str, Any]:
    return {"token": emulator.application_token, "application_id": emulator.application_id,
            "application_secret": emulator.application_secret, "oauth_redirect_url": emulator.oauth_redirect_url,
            "api_version": emulator.config.application_api_version,
            "events_enabled": emulator.app_events_enabled,
            "events_enablement_scope": emulator.knobs.events_enablement_scope}


async def get_application(request: web.Request) -> web.Response:
    return json_response(_application_json(_emu(request)))


def _optional_string(body: dict[str, Any], name: str, *, nullable: bool) -> str | None:
    value = body[name]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"`{name}` must be a non-empty string{' or null' if nullable else ''}.", field=name)
    return value


async def put_application(request: web.Request) -> web.Response:
    """Set the application's settings: its personal access token (``null`` removes it), its OAuth client secret,
    its registered OAuth redirect URL (``null``: none). At least one of them."""
    body = await _json(request)
    reject_unknown(body, frozenset(("token", "application_secret", "oauth_redirect_url")), orjson.dumps(body))
    if not body:
        raise bad_request("`token` is required (a string, or null to remove it).", field="token")
    emulator = _emu(request)
    if "token" in body:
        token = _optional_string(body, "token", nullable=True)
        if token is not None and token in emulator.tokens:
            raise bad_request(f"That token belongs to seller `{emulator.tokens[token]}`.", field="token")
        emulator.application_token = token
    if "application_secret" in body:
        emulator.application_secret = str(_optional_string(body, "application_secret", nullable=False))
    if "oauth_redirect_url" in body:
        emulator.oauth_redirect_url = _optional_string(body, "oauth_redirect_url", nullable=True)
    return json_response(_application_json(emulator))


async def snapshot(request: web.Request) -> web.Response:
    emulator = _emu(request)
    body = await _json(request)
    if body.get("path"):
        save_snapshot(emulator, str(body["path"]))
        return json_response({"path": body["path"]})
    return json_response(emulator.snapshot())


async def restore(request: web.Request) -> web.Response:
    emulator = _emu(request)
    body = await _json(request)
    if body.get("path"):
        if not load_snapshot_if_exists(emulator, str(body["path"])):
            raise SquareError(404, [{"code": "NOT_FOUND", "detail": "No snapshot at that path.",
                                     "category": "INVALID_REQUEST_ERROR"}])
    else:
        emulator.restore(body)
    return json_response({"ok": True})
