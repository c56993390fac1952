"""Factories for Square-shaped test data (deterministic, no PII from real people): one per domain object.

- :func:`customer`: a Square Customer object, as the API returns it;
- :func:`event`: a Square webhook event envelope about one customer (the body Square POSTs, the item
  SearchEvents returns); :func:`event_job`: the job payload the receiver queues for it;
- :func:`webhook_body`: that envelope as the bytes Square sends, and :func:`signed_headers` to sign them;
- :func:`stored_customer`: a ``square.customers`` row as the mirror stores it, written through its own write path;
- :func:`group`: a customer group definition; :func:`at`: a point in (test) time.
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
