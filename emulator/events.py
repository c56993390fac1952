"""Event envelopes (webhook + Events API) of customers and custom attributes, and SearchEvents.

The same event object is stored for SearchEvents and sent to webhook subscriptions, so both views of
a mutation agree byte for byte. Payload rules (spec descriptions): no ``segment_ids`` in any customer
event; ``customer.deleted`` also drops ``group_ids`` (and, like the spec example, the timestamps) and
sets ``data.deleted``; merges add ``data.object.event_context.merge`` on created and deleted events.
Custom attribute events (FACTS-2 A.6): ``data.type`` is ``custom_attribute`` (``data.id`` =
``{qualified key}:CUSTOMER:{customer id}``) or ``custom_attribute_definition`` (``data.id`` = the qualified key);
``.deleted`` events set ``data.deleted`` and carry the last state.
"""

from __future__ import annotations

import base64
import heapq
import random
from array import array
from collections.abc import Sequence
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


def attribute_event(merchant_id: str, event_type: str, *, data_type: str, data_id: str, obj: dict[str, Any],
                    deleted: bool, wrapped: bool, event_id: str, ts: float) -> dict[str, Any]:
    """A ``customer.custom_attribute*`` event: ``obj`` (a CustomAttribute or CustomAttributeDefinition) directly in
    ``data.object`` (``wrapped=False``, Square's examples) or under its type name (``wrapped=True``, the schema)."""
    data: dict[str, Any] = {"type": data_type, "id": data_id}
    if deleted:
        data["deleted"] = True
    data["object"] = {data_type: obj} if wrapped else obj
    return {"merchant_id": merchant_id, "type": event_type, "event_id": event_id, "created_at": rfc3339_s(ts),
            "data": data}


class EventLog:
    """Per-merchant append-only log; entries are (epoch, event). Old entries age out after 28 days.

    Two arrays run alongside ``entries``: ``searchable`` (1 if the seller's events were enabled when the event
    occurred: Square makes only those searchable, whatever the state later) and ``seqs`` (an emulator-wide
    emission sequence number, the tie-break that merges several sellers' logs into one stable order).
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.entries: list[tuple[float, dict[str, Any]]] = []
        self.searchable = bytearray()
        self.seqs: array[int] = array("q")
        self.max_entries = max_entries
        self.dropped = 0  # entries removed from the head; absolute position = dropped + index

    def append(self, ts: float, event: dict[str, Any], *, searchable: bool = True, seq: int | None = None) -> None:
        """Append; beyond ``max_entries`` the oldest tenth is dropped so long benchmarks stay bounded."""
        self.entries.append((ts, event))
        self.searchable.append(1 if searchable else 0)
        self.seqs.append(self.dropped + len(self.entries) if seq is None else seq)
        if len(self.entries) > self.max_entries:
            self._drop_head(max(1, self.max_entries // 10))

    def _drop_head(self, n: int) -> None:
        del self.entries[:n]
        del self.searchable[:n]
        del self.seqs[:n]
        self.dropped += n

    def prune(self, now: float) -> None:
        cutoff = now - RETENTION_SECONDS
        if self.entries and self.entries[0][0] < cutoff:
            keep = [i for i, (ts, _) in enumerate(self.entries) if ts >= cutoff]
            self.dropped += len(self.entries) - len(keep)
            self.entries = [self.entries[i] for i in keep]
            self.searchable = bytearray(self.searchable[i] for i in keep)
            self.seqs = array("q", (self.seqs[i] for i in keep))

    def count_searchable(self) -> int:
        return self.searchable.count(1)

    def to_json(self) -> list[list[Any]]:
        """Snapshot form: ``[ts, event, searchable, seq]`` per entry."""
        return [[ts, e, bool(flag), seq] for (ts, e), flag, seq in zip(self.entries, self.searchable, self.seqs,
                                                                      strict=True)]


def search_events(sources: Sequence[tuple[str, EventLog]], body: dict[str, Any], raw: bytes,
                  now: float) -> dict[str, Any]:
    """SearchEvents over the searchable customer and custom attribute events of the last 28 days of one or more
    sellers.

    ``sources`` is what the caller's token may see: its own seller for a seller's token, every seller for the
    application's token. Results are merged in ``created_at`` order (second precision, as events carry it),
    ties in emission order, with a keyset cursor on that order, so paging is stable while events arrive.
    """
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
    after: tuple[int, int] | None = None  # keyset cursor: (created_at second, seq) of the last event returned
    if body.get("cursor"):
        try:
            cur = orjson.loads(base64.urlsafe_b64decode(body["cursor"]))
            if cur["q"] != fingerprint:
                raise ValueError
            after = (int(cur["k"][0]), int(cur["k"][1]))
        except (ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
            raise invalid_cursor() from None
    desc = order == "DESC"
    matched: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for merchant_id, log in sources:
        if merchants and merchant_id not in merchants:
            continue
        for (ts, event), flag, seq in zip(log.entries, log.searchable, log.seqs, strict=True):
            if not flag or ts < lower or (end is not None and ts >= end) or (types and event["type"] not in types):
                continue
            key = (int(ts), seq)
            if after is not None and (key >= after if desc else key <= after):
                continue
            matched.append((key, event))
    pick = heapq.nlargest if desc else heapq.nsmallest
    page = pick(limit + 1, matched, key=lambda item: item[0])
    if not page:
        return {}
    events = [e for _, e in page[:limit]]
    out: dict[str, Any] = {"events": events,
                           "metadata": [{"event_id": e["event_id"], "api_version": API_VERSION} for e in events]}
    if len(page) > limit:
        last = page[limit - 1][0]
        out["cursor"] = base64.urlsafe_b64encode(orjson.dumps({"k": list(last), "q": fingerprint})).decode()
    return out


def rng_for(seed: int, *parts: str) -> random.Random:
    """A per-decision RNG so fault draws do not depend on the interleaving of concurrent work."""
    return random.Random(f"{seed}:" + ":".join(parts))
