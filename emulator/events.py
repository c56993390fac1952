"""Customer event envelopes (webhook + Events API) and SearchEvents.

The same event object is stored for SearchEvents and sent to webhook subscriptions, so both views of
a mutation agree byte for byte. Payload rules (spec descriptions): no ``segment_ids`` in any customer
event; ``customer.deleted`` also drops ``group_ids`` (and, like the spec example, the timestamps) and
sets ``data.deleted``; merges add ``data.object.event_context.merge`` on created and deleted events.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import orjson

from .clock import parse_rfc3339, rfc3339_s
from .errors import bad_request, invalid_cursor
from .validation import parse_limit, reject_unknown

RETENTION_SECONDS = 28 * 24 * 3600
API_VERSION = "2025-08-20"


def customer_event(merchant_id: str, event_type: str, customer: dict[str, Any], *, event_id: str, ts: float,
                   merge: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = {k: v for k, v in customer.items() if k != "segment_ids"}
    data: dict[str, Any] = {"type": "customer", "id": customer["id"]}
    if event_type == "customer.deleted":
        for key in ("group_ids", "created_at", "updated_at"):
            payload.pop(key, None)
        data["deleted"] = True
    obj: dict[str, Any] = {"customer": payload}
    if merge is not None and event_type in ("customer.created", "customer.deleted"):
        obj["event_context"] = {"merge": merge}
    data["object"] = obj
    return {"merchant_id": merchant_id, "type": event_type, "event_id": event_id, "created_at": rfc3339_s(ts),
            "data": data}


class EventLog:
    """Per-merchant append-only log; entries are (epoch, event). Old entries age out after 28 days."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.entries: list[tuple[float, dict[str, Any]]] = []
        self.max_entries = max_entries
        self.dropped = 0  # entries removed from the head; absolute position = dropped + index

    def append(self, ts: float, event: dict[str, Any]) -> None:
        """Append; beyond ``max_entries`` the oldest tenth is dropped so long benchmarks stay bounded."""
        self.entries.append((ts, event))
        if len(self.entries) > self.max_entries:
            n = max(1, self.max_entries // 10)
            del self.entries[:n]
            self.dropped += n

    def prune(self, now: float) -> None:
        cutoff = now - RETENTION_SECONDS
        if self.entries and self.entries[0][0] < cutoff:
            keep = [e for e in self.entries if e[0] >= cutoff]
            self.dropped += len(self.entries) - len(keep)
            self.entries = keep


def search_events(log: EventLog, merchant_id: str, body: dict[str, Any], raw: bytes, now: float) -> dict[str, Any]:
    """SearchEvents over this merchant's customer events of the last 28 days."""
    reject_unknown(body, frozenset(("cursor", "limit", "query")), raw)
    limit = parse_limit(body.get("limit"), low=1, high=100, default=100)
    query = body.get("query") or {}
    reject_unknown(query, frozenset(("filter", "sort")), raw)
    flt = query.get("filter") or {}
    reject_unknown(flt, frozenset(("event_types", "merchant_ids", "location_ids", "created_at")), raw)
    sort = query.get("sort") or {}
    order = sort.get("order") or "DESC"  # UNCONFIRMED default: newest first
    if order not in ("ASC", "DESC"):
        raise bad_request(f"`{order}` is not a valid enum value for `query.sort.order`.", code="INVALID_ENUM_VALUE")
    types = set(flt.get("event_types") or [])
    merchants = set(flt.get("merchant_ids") or [])
    if flt.get("location_ids"):
        return {}  # customer events carry no location_id
    start = end = None
    rng = flt.get("created_at") or {}
    try:
        start = parse_rfc3339(rng["start_at"]) if rng.get("start_at") else None
        end = parse_rfc3339(rng["end_at"]) if rng.get("end_at") else None
    except ValueError:
        raise bad_request("Invalid `created_at` time range.", code="INVALID_TIME_RANGE") from None
    lower = max(start or 0.0, now - RETENTION_SECONDS)
    fingerprint = orjson.dumps(query, option=orjson.OPT_SORT_KEYS).hex()[:64]
    after: int | None = None  # keyset cursor: absolute log position of the last event returned
    if body.get("cursor"):
        try:
            cur = orjson.loads(base64.urlsafe_b64decode(body["cursor"]))
            after = int(cur["p"])
            if cur["q"] != fingerprint:
                raise ValueError
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            raise invalid_cursor() from None
    desc = order == "DESC"
    base = log.dropped
    matched = [(base + i, e) for i, (ts, e) in enumerate(log.entries)
               if ts >= lower and (end is None or ts < end) and (not types or e["type"] in types)
               and (not merchants or merchant_id in merchants)
               and (after is None or (base + i < after if desc else base + i > after))]
    if desc:
        matched.reverse()
    page = matched[:limit]
    if not page:
        return {}
    events = [e for _, e in page]
    out: dict[str, Any] = {"events": events,
                           "metadata": [{"event_id": e["event_id"], "api_version": API_VERSION} for e in events]}
    if len(matched) > limit:
        out["cursor"] = base64.urlsafe_b64encode(orjson.dumps({"p": page[-1][0], "q": fingerprint})).decode()
    return out


def rng_for(seed: int, *parts: str) -> random.Random:
    """A per-decision RNG so fault draws do not depend on the interleaving of concurrent work."""
    return random.Random(f"{seed}:" + ":".join(parts))
