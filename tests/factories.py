"""Factories for Square-shaped test data (deterministic, no PII from real people): one per domain object.

- :func:`customer`: a Square Customer object, as the API returns it;
- :func:`event`: a Square webhook event envelope about one customer (the body Square POSTs, the item
  SearchEvents returns); :func:`event_job`: the job payload the receiver queues for it;
- :func:`webhook_body`: that envelope as the bytes Square sends, and :func:`signed_headers` to sign them;
- :func:`stored_customer`: a ``square.customers`` row as the mirror stores it, written through its own write path;
- :func:`group`: a customer group definition; :func:`at`: a point in (test) time;
- :func:`custom_attribute`, :func:`attribute_definition`: a custom attribute value and definition as Square returns
  them; :func:`custom_attribute_event`: a webhook event about one of them (Square's example shape, or the schema's
  wrapped one).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from types import EllipsisType
from typing import Any

import asyncpg
import orjson

from square_mirror.jobs import build_event_job
from webhooks.signature import compute_signature
from worker.store import tombstone_customers, upsert_customers

_counter = itertools.count(1)
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
EVENT_TIME = "2024-01-02T03:04:05Z"
RECEIVED_AT = "2024-01-02T03:04:06.000Z"
SIGNATURE_KEY = "test-signature-key"
NOTIFICATION_URL = "https://emulator.local/square/webhooks"


def customer_id(n: int | None = None) -> str:
    return f"CUST{(n if n is not None else next(_counter)):022d}"


def customer(
    cid: str | None = None,
    *,
    version: int = 0,
    group_ids: list[str] | None = None,
    segment_ids: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    cid = cid or customer_id()
    body: dict[str, Any] = {
        "id": cid,
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": (BASE_TIME + timedelta(minutes=version)).isoformat().replace("+00:00", "Z"),
        "given_name": f"Given{version}",
        "family_name": "Family",
        "email_address": f"{cid.lower()}@example.test",
        "phone_number": "+12065550100",
        "preferences": {"email_unsubscribed": False},
        "creation_source": "THIRD_PARTY",
        "version": version,
    }
    if group_ids:
        body["group_ids"] = group_ids
    if segment_ids:
        body["segment_ids"] = segment_ids
    body.update(fields)
    return body


def group(gid: str, name: str | None = None, *, minute: int = 0) -> dict[str, Any]:
    ts = (BASE_TIME + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
    return {"id": gid, "name": name or f"Group {gid}", "created_at": ts, "updated_at": ts}


def at(seconds: float) -> datetime:
    return BASE_TIME + timedelta(seconds=seconds)


def event(
    n: int = 1,
    *,
    event_type: str = "customer.updated",
    merchant_id: str = "MLTEST",
    customer_id: str | None = None,
    event_id: str | None = None,
    version: int | EllipsisType | None = ...,
    created_at: str = EVENT_TIME,
    merge: tuple[list[str], str] | None = None,
    data: dict[str, Any] | None = None,
    **customer_fields: Any,
) -> dict[str, Any]:
    """A Square webhook event about customer number ``n``: ID ``CUST0000000n``, event ID ``evt-0000000n`` and
    version ``n`` unless given (``version=None`` leaves it out). A ``customer.deleted`` event says
    ``deleted: true``; ``merge=(from_ids, to_id)`` adds the merge ``event_context``; ``data`` replaces the whole
    ``data`` object (for other event types); other keywords are fields of the customer object."""
    if data is None:
        cid = customer_id or f"CUST{n:08d}"
        obj: dict[str, Any] = {"id": cid}
        if version is not None:
            obj["version"] = n if isinstance(version, EllipsisType) else version
        obj.update(customer_fields)
        wrapper: dict[str, Any] = {"customer": obj}
        if merge is not None:
            wrapper["event_context"] = {"merge": {"from_customer_ids": list(merge[0]), "to_customer_id": merge[1]}}
        data = {"type": "customer", "id": cid, "object": wrapper}
        if event_type == "customer.deleted":
            data["deleted"] = True
    return {"merchant_id": merchant_id, "type": event_type, "event_id": event_id or f"evt-{n:08d}",
            "created_at": created_at, "data": data}


def event_job(n: int = 1, *, received_at: str | None = RECEIVED_AT, source: str = "webhook",
              **event_fields: Any) -> dict[str, Any]:
    """The job payload the receiver queues for :func:`event` ``(n, **event_fields)``."""
    return build_event_job(event(n, **event_fields), received_at=received_at, source=source)


def webhook_body(n: int = 1, **event_fields: Any) -> bytes:
    """:func:`event` ``(n, **event_fields)`` as the compact JSON bytes Square POSTs."""
    return orjson.dumps(event(n, **event_fields))


def signed_headers(body: bytes, key: str = SIGNATURE_KEY, url: str = NOTIFICATION_URL, *,
                   content_type: str | None = "application/json", environment: str | None = "Sandbox",
                   ) -> dict[str, str]:
    """The headers Square sends with ``body``: its HMAC-SHA256 signature for ``url`` under ``key``, and (unless
    None) the content type and the ``square-environment``."""
    headers = {"x-square-hmacsha256-signature": compute_signature(key, url, body)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if environment is not None:
        headers["square-environment"] = environment
    return headers


async def stored_customer(
    db: asyncpg.Pool | asyncpg.Connection,
    cid: str | None = None,
    *,
    merchant_id: str = "M",
    observed_at: datetime = BASE_TIME,
    deleted: bool = False,
    merged_into: str | None = None,
    **customer_fields: Any,
) -> dict[str, Any]:
    """A ``square.customers`` row as the mirror stores it, written through the mirror's own write path
    (``worker.store``): :func:`customer` ``(cid, **customer_fields)`` upserted, then tombstoned when ``deleted``
    (merged away when ``merged_into`` is given). Returns the Square customer object it stored."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await stored_customer(conn, cid, merchant_id=merchant_id, observed_at=observed_at,
                                         deleted=deleted, merged_into=merged_into, **customer_fields)
    body = customer(cid, **customer_fields)
    await upsert_customers(db, merchant_id, [body], observed_at)
    if deleted or merged_into:
        await tombstone_customers(db, merchant_id, [body["id"]], observed_at, merged_into=merged_into)
    return body


STRING_SCHEMA = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}


def stamp(minute: float) -> str:
    """An RFC 3339 time ``minute`` minutes after BASE_TIME."""
    return (BASE_TIME + timedelta(minutes=minute)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def custom_attribute(key: str = "favorite-drink", value: Any = "Flat white", *, version: int = 1,
                     created: float = 0, updated: float | None = None,
                     visibility: str = "VISIBILITY_READ_ONLY") -> dict[str, Any]:
    """A CustomAttribute; ``created``/``updated`` are minutes after BASE_TIME (updated defaults to ``version``)."""
    return {"key": key, "value": value, "version": version, "visibility": visibility, "created_at": stamp(created),
            "updated_at": stamp(updated if updated is not None else created + version)}


def attribute_definition(key: str = "favorite-drink", name: str = "Favorite drink", *,
                         schema: dict[str, Any] | None = None, version: int = 1, created: float = 0,
                         visibility: str = "VISIBILITY_READ_ONLY") -> dict[str, Any]:
    return {"key": key, "name": name, "description": f"The {name.lower()}", "schema": schema or STRING_SCHEMA,
            "visibility": visibility, "version": version, "created_at": stamp(created),
            "updated_at": stamp(created + version)}


def custom_attribute_event(obj: dict[str, Any], *, customer_id: str | None = None,
                           event_type: str = "customer.custom_attribute.visible.updated", merchant_id: str = "MLTEST",
                           event_id: str | None = None, created_at: str | None = None, wrapped: bool = False,
                           qualified_key: str | None = None) -> dict[str, Any]:
    """A custom-attribute (``customer_id`` given) or definition event carrying ``obj``. ``data.id`` is
    ``{key}:CUSTOMER:{customer_id}`` (``qualified_key`` replaces the key there); ``wrapped`` nests the object as
    the schema does; a ``.deleted`` type says ``deleted: true``."""
    definition = customer_id is None
    key = qualified_key or obj["key"]
    kind = "custom_attribute_definition" if definition else "custom_attribute"
    data: dict[str, Any] = {"type": kind, "id": key if definition else f"{key}:CUSTOMER:{customer_id}",
                            "object": {kind: obj} if wrapped else obj}
    if event_type.endswith(".deleted"):
        data["deleted"] = True
    return {"merchant_id": merchant_id, "type": event_type, "event_id": event_id or f"evt-ca-{next(_counter)}",
            "created_at": created_at or obj.get("updated_at") or EVENT_TIME, "data": data}
