"""The Webhook Subscriptions API (FACTS-2 C): the application's own subscriptions, their signature keys, test
events and the catalogue of event types. Delivery is ``webhooks.WebhookDispatcher``'s (faults and retries included):
an API subscription is a ``Subscription`` with ``api=True`` and no ``merchant_id``, covering every seller.

Pure state, no aiohttp; request bodies arrive parsed (with their raw bytes for Square's unknown-field errors).
"""

from __future__ import annotations

import base64
import random
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson

from . import clock, errors
from .config import ATTRIBUTE_EVENT_TYPES, CUSTOMER_EVENT_TYPES, DEPRECATED_ALIASES, REVOKED_EVENT_TYPE, Knobs
from .errors import bad_request
from .validation import parse_limit, reject_unknown
from .webhooks import Subscription, WebhookDispatcher

# ListWebhookEventTypes: (event type, api_version_introduced, release_status).
CATALOGUE: tuple[tuple[str, str, str], ...] = (
    *((t, "2021-02-26", "PUBLIC") for t in CUSTOMER_EVENT_TYPES),
    *((t, "2022-08-17", "PUBLIC") for t in ATTRIBUTE_EVENT_TYPES),
    *((t, "2022-05-12", "DEPRECATED") for t in DEPRECATED_ALIASES.values()),
    (REVOKED_EVENT_TYPE, "2020-08-26", "PUBLIC"),
)
KNOWN_TYPES = frozenset(t for t, _, _ in CATALOGUE)
_FIELDS = frozenset(("name", "enabled", "event_types", "notification_url", "api_version"))
_READ_ONLY = frozenset(("id", "signature_key", "created_at", "updated_at"))


def event_types(api_version: str | None) -> dict[str, Any]:
    """ListWebhookEventTypes: every type introduced by ``api_version`` (all without it)."""
    rows = [r for r in CATALOGUE if api_version is None or r[1] <= api_version]
    return {"event_types": [t for t, _, _ in rows],
            "metadata": [{"event_type": t, "api_version_introduced": v, "release_status": s} for t, v, s in rows]}


def _check_fields(sub: dict[str, Any], raw: bytes, *, creating: bool) -> dict[str, Any]:
    reject_unknown(sub, _FIELDS | _READ_ONLY, raw)
    out = {k: v for k, v in sub.items() if k in _FIELDS and v is not None}
    if creating:
        for name in ("notification_url", "event_types"):
            if not out.get(name):
                raise errors.missing_parameter(f"subscription.{name}")
    types = out.get("event_types")
    if types is not None:
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise bad_request("`event_types` must be a non-empty list of strings.", "subscription.event_types",
                              "INVALID_VALUE")
        unknown = [t for t in types if t not in KNOWN_TYPES]
        if unknown:
            raise bad_request(f"Unknown event type `{unknown[0]}`.", "subscription.event_types", "INVALID_VALUE")
    url = out.get("notification_url")
    if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https")
                            or not urlsplit(url).netloc):
        raise bad_request("`notification_url` must be an absolute http(s) URL.", "subscription.notification_url",
                          "INVALID_VALUE")
    if "name" in out and (not isinstance(out["name"], str) or len(out["name"]) > 64):
        raise bad_request("`name` must be a string of at most 64 characters.", "subscription.name", "VALUE_TOO_LONG")
    if "enabled" in out and not isinstance(out["enabled"], bool):
        raise bad_request("`enabled` must be a boolean.", "subscription.enabled", "EXPECTED_BOOLEAN")
    return out


def _cursor(key: tuple[float, str], order: str, include_disabled: bool) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([key[0], key[1], order, include_disabled])).decode()


def _after(cursor: str, order: str, include_disabled: bool) -> tuple[float, str]:
    try:
        ts, sid, c_order, c_disabled = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise errors.invalid_cursor() from None
    if c_order != order or c_disabled != include_disabled:
        raise errors.invalid_cursor()
    return float(ts), str(sid)


class ApiSubscriptions:
    """The application's subscriptions as the public API sees them, plus idempotency."""

    def __init__(self, seed: int, knobs: Knobs, dispatcher: WebhookDispatcher) -> None:
        self.knobs = knobs
        self.dispatcher = dispatcher
        self.rng = random.Random(f"subscriptions:{seed}")
        self.idempotency: dict[str, dict[str, Any]] = {}

    def _time(self, ts: float) -> str:
        return clock.go_time(ts) if self.knobs.subscription_timestamp_format == "go" else clock.rfc3339_ms(ts)

    def to_json(self, sub: Subscription, *, with_key: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"id": sub.id}
        if sub.name is not None:
            out["name"] = sub.name
        out |= {"enabled": sub.enabled, "event_types": list(sub.event_types), "notification_url": sub.notification_url,
                "api_version": sub.api_version}
        if with_key:
            out["signature_key"] = sub.signature_key
        return out | {"created_at": self._time(sub.created_at), "updated_at": self._time(sub.updated_at)}

    def _new_key(self) -> str:
        return base64.urlsafe_b64encode(self.rng.getrandbits(128).to_bytes(16, "big")).rstrip(b"=").decode()

    def all(self) -> list[Subscription]:
        return [s for s in self.dispatcher.subscriptions if s.api]

    def get(self, sid: str) -> Subscription:
        for sub in self.all():
            if sub.id == sid:
                return sub
        raise errors.not_found(f"Webhook subscription `{sid}` not found.")

    def create(self, body: dict[str, Any], raw: bytes, default_api_version: str) -> dict[str, Any]:
        reject_unknown(body, frozenset(("idempotency_key", "subscription")), raw)
        key = body.get("idempotency_key")
        if key and key in self.idempotency:
            return self.idempotency[key]  # replayed even if the body differs (as CreateCustomer)
        spec = body.get("subscription")
        if not isinstance(spec, dict):
            raise errors.missing_parameter("subscription")
        fields = _check_fields(spec, raw, creating=True)
        now = clock.now()
        sub = Subscription(id=f"wbhk_{uuid.UUID(int=self.rng.getrandbits(128)).hex}", merchant_id=None,
                           url=fields["notification_url"], signature_key=self._new_key(),
                           notification_url=fields["notification_url"], event_types=tuple(fields["event_types"]),
                           enabled=fields.get("enabled", True), api=True, name=fields.get("name"),
                           api_version=fields.get("api_version") or default_api_version, created_at=now,
                           updated_at=now)
        self.dispatcher.subscriptions.append(sub)
        result = {"subscription": self.to_json(sub, with_key=True)}
        if key:
            self.idempotency[key] = result
        return result

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        order = query.get("sort_order", "ASC")
        if order not in ("ASC", "DESC"):
            raise bad_request(f"Invalid sort_order `{order}`.", "sort_order", "INVALID_ENUM_VALUE")
        include_disabled = query.get("include_disabled", "false").lower() == "true"
        limit = parse_limit(query.get("limit"), low=1, high=100, default=100)
        subs = sorted((s for s in self.all() if s.enabled or include_disabled), key=lambda s: (s.created_at, s.id),
                      reverse=order == "DESC")
        if query.get("cursor"):
            after = _after(query["cursor"], order, include_disabled)
            subs = [s for s in subs if ((s.created_at, s.id) > after) == (order == "ASC")
                    and (s.created_at, s.id) != after]
        out: dict[str, Any] = {}
        if subs:
            out["subscriptions"] = [self.to_json(s, with_key=False) for s in subs[:limit]]
        if len(subs) > limit:
            last = subs[limit - 1]
            out["cursor"] = _cursor((last.created_at, last.id), order, include_disabled)
        return out

    def update(self, sid: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """UNCONFIRMED #12: every writable field may change (enabled, name, event_types, notification_url,
        api_version); read-only fields are ignored."""
        sub = self.get(sid)
        reject_unknown(body, frozenset(("subscription",)), raw)
        spec = body.get("subscription") or {}
        if not isinstance(spec, dict):
            raise bad_request("`subscription` must be an object.", "subscription", "EXPECTED_OBJECT")
        fields = _check_fields(spec, raw, creating=False)
        if "event_types" in fields:
            sub.event_types = tuple(fields["event_types"])
        if "notification_url" in fields:
            sub.url = sub.notification_url = fields["notification_url"]
        sub.name = fields.get("name", sub.name)
        sub.enabled = fields.get("enabled", sub.enabled)
        sub.api_version = fields.get("api_version", sub.api_version)
        sub.updated_at = clock.now()
        return {"subscription": self.to_json(sub, with_key=False)}

    def delete(self, sid: str) -> None:
        sub = self.get(sid)
        self.dispatcher.subscriptions.remove(sub)

    def rotate_key(self, sid: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """A new signature key; the old one keeps signing for ``signature_key_overlap_seconds`` (UNCONFIRMED #12)."""
        sub = self.get(sid)
        reject_unknown(body, frozenset(("idempotency_key",)), raw)
        key = body.get("idempotency_key")
        replay = f"{sid}:{key}"
        if key and replay in self.idempotency:
            return self.idempotency[replay]
        now = clock.now()
        sub.previous_key, sub.previous_key_until = sub.signature_key, now + self.knobs.signature_key_overlap_seconds
        sub.signature_key = self._new_key()
        sub.updated_at = now
        result = {"signature_key": sub.signature_key}
        if key:
            self.idempotency[replay] = result
        return result

    def test_event(self, sub: Subscription, body: dict[str, Any], raw: bytes, merchant_id: str) -> tuple[str, bytes]:
        """TestWebhookSubscription's event: ``event_type`` must be one of the subscription's (default: its first)."""
        reject_unknown(body, frozenset(("event_type",)), raw)
        event_type = body.get("event_type") or sub.event_types[0]
        if event_type not in sub.event_types:
            raise bad_request(f"The subscription does not include event type `{event_type}`.", "event_type",
                              "INVALID_VALUE")
        return event_type, orjson.dumps(sample_event(event_type, merchant_id, self.rng))

    def test_result(self, payload: bytes, status: int | None) -> dict[str, Any]:
        now = self._time(clock.now())
        result: dict[str, Any] = {"id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4))}
        if status is not None:
            result["status_code"] = status
        return {"subscription_test_result": result | {"payload": payload.decode(), "created_at": now,
                                                      "updated_at": now}}


def sample_event(event_type: str, merchant_id: str, rng: random.Random) -> dict[str, Any]:
    """A plausible event of the type for TestWebhookSubscription (not recorded, not retried)."""
    now = clock.now()
    obj_id = clock.new_id(rng)
    data: dict[str, Any]
    if event_type == REVOKED_EVENT_TYPE:
        data = {"type": "revocation", "id": clock.new_uuid(rng),
                "object": {"revocation": {"revoked_at": clock.rfc3339_ns(now), "revoker_type": "MERCHANT"}}}
    elif event_type.startswith("customer.custom_attribute_definition"):
        data = {"type": "custom_attribute_definition", "id": "test-app:test-key",
                "object": {"key": "test-app:test-key", "name": "Test", "version": 1,
                           "visibility": "VISIBILITY_READ_ONLY", "created_at": clock.rfc3339_ms(now),
                           "updated_at": clock.rfc3339_ms(now)}}
    elif event_type.startswith("customer.custom_attribute"):
        data = {"type": "custom_attribute", "id": f"test-app:test-key:CUSTOMER:{obj_id}",
                "object": {"key": "test-app:test-key", "value": "Test", "version": 1,
                           "visibility": "VISIBILITY_READ_ONLY", "created_at": clock.rfc3339_ms(now),
                           "updated_at": clock.rfc3339_ms(now)}}
    else:
        customer = {"id": obj_id, "created_at": clock.rfc3339_ms(now), "updated_at": clock.rfc3339_s(now),
                    "given_name": "Test", "family_name": "Customer", "preferences": {"email_unsubscribed": False},
                    "creation_source": "THIRD_PARTY", "version": 0}
        data = {"type": "customer", "id": obj_id, "object": {"customer": customer}}
        if event_type == "customer.deleted":
            data["deleted"] = True
    return {"merchant_id": merchant_id, "type": event_type, "event_id": clock.new_uuid(rng),
            "created_at": clock.rfc3339_s(now), "data": data}
