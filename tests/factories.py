"""Factories for Square-shaped test data (deterministic, no PII from real people)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

_counter = itertools.count(1)
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


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
