"""The list/search index: what ListCustomers and SearchCustomers see, possibly ``index_lag_seconds`` behind the
truth, kept as sorted key lists that bisection walks and keyset cursors point into. Custom attribute values lag
with it: the search filter ``custom_attribute`` reads the index's copy (``attrs``), not the truth.
"""

from __future__ import annotations

import base64
import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from . import clock
from .attribute_values import AttrValue
from .errors import invalid_cursor
from .records import CustomerRec
from .search import Predicate


class CustomerIndex:
    """What ListCustomers/SearchCustomers see: public profiles, possibly ``index_lag_seconds`` behind.

    Built at once from ``records`` and ``attrs`` (seeding, restore), then kept up to date by ``stage`` /
    ``stage_attr`` (a committed change, visible from ``due`` on) and ``catch_up`` (apply every change that is due)."""

    def __init__(self, records: Iterable[CustomerRec] = (),
                 attrs: Mapping[str, Mapping[str, AttrValue]] | None = None) -> None:
        self.visible: dict[str, CustomerRec] = {r.id: r for r in records if r.public}
        self.by_default: list[tuple[str, str]] = []
        self.by_created: list[tuple[str, str]] = []
        self.by_updated: list[tuple[float, str]] = []  # narrows updated_at range searches (incremental sync)
        self._sort()
        self.pending: deque[tuple[float, str, CustomerRec | None]] = deque()
        self.generation = 0
        # Custom attribute values as searches see them (customer id -> qualified key -> value), and who holds a key.
        self.attrs: dict[str, dict[str, AttrValue]] = {}
        self.holders: dict[str, set[str]] = {}
        for cid, values in (attrs or {}).items():
            if values:
                self.attrs[cid] = dict(values)
                for key in values:
                    self.holders.setdefault(key, set()).add(cid)
        self.attr_pending: deque[tuple[float, str, str, AttrValue | None]] = deque()
        self._narrowed: dict[tuple[str, bool], list[tuple[str, str]]] = {}
        self._narrowed_generation = -1

    def _sort(self) -> None:
        self.by_default = sorted(r.dkey for r in self.visible.values())
        self.by_created = sorted(r.ckey for r in self.visible.values())
        self.by_updated = sorted((r.updated_ts, r.id) for r in self.visible.values())

    def stage(self, due: float, cid: str, rec: CustomerRec | None) -> None:
        self.pending.append((due, cid, rec))

    def stage_attr(self, due: float, cid: str, key: str, value: AttrValue | None) -> None:
        """A custom attribute value set (or deleted: ``None``) on a profile, searchable from ``due`` on."""
        self.attr_pending.append((due, cid, key, value))

    def _catch_up_attrs(self, now: float) -> bool:
        pending = self.attr_pending
        if not pending or pending[0][0] > now:
            return False
        while pending and pending[0][0] <= now:
            _, cid, key, value = pending.popleft()
            if value is not None:
                self.attrs.setdefault(cid, {})[key] = value
                self.holders.setdefault(key, set()).add(cid)
                continue
            values = self.attrs.get(cid)
            if values is None or values.pop(key, None) is None:
                continue
            if not values:
                del self.attrs[cid]
            holders = self.holders.get(key)
            if holders is not None:
                holders.discard(cid)
                if not holders:
                    del self.holders[key]
        return True

    def catch_up(self, now: float) -> None:
        if self._catch_up_attrs(now):
            self.generation += 1
        pending = self.pending
        if not pending or pending[0][0] > now:
            return
        due: list[tuple[str, CustomerRec | None]] = []
        while pending and pending[0][0] <= now:
            _, cid, rec = pending.popleft()
            due.append((cid, rec))
        self.generation += 1
        if len(due) > 256:
            for cid, rec in due:
                if rec is not None and rec.public:
                    self.visible[cid] = rec
                else:
                    self.visible.pop(cid, None)
            self._sort()
            return
        for cid, rec in due:
            old = self.visible.pop(cid, None)
            if old is not None:
                _remove(self.by_default, old.dkey)
                _remove(self.by_created, old.ckey)
                _remove_u(self.by_updated, (old.updated_ts, cid))
            if rec is not None and rec.public:
                self.visible[cid] = rec
                bisect.insort(self.by_default, rec.dkey)
                bisect.insort(self.by_created, rec.ckey)
                bisect.insort(self.by_updated, (rec.updated_ts, cid))

    def updated_between(self, start: float | None, end: float | None) -> set[str] | None:
        """IDs whose updated_at is in [start, end), or None when the range is too wide to be worth it."""
        keys = self.by_updated
        lo = bisect.bisect_left(keys, (start, "")) if start is not None else 0
        hi = bisect.bisect_left(keys, (end, "")) if end is not None else len(keys)
        if hi - lo > len(keys) // 2:
            return None
        return {k[1] for k in keys[lo:hi]}

    def page(self, now: float, *, sort_field: str, order: str, limit: int, cursor: str | None, fingerprint: str,
             predicates: list[Predicate] | None, count: bool,
             cursor_ttl: float) -> tuple[list[CustomerRec], str | None, int | None]:
        """One page at ``now`` (after catching up) with keyset cursors tied to the query fingerprint; a cursor
        older than ``cursor_ttl`` seconds (0: never) is ``INVALID_CURSOR``."""
        self.catch_up(now)
        keys: list[tuple[str, str]] = self.by_created if sort_field == "CREATED_AT" else self.by_default
        visible = self.visible
        for pred in predicates or ():
            if getattr(pred, "range_attr", None) == "updated_ts":
                # A narrow updated_at range (incremental sync) walks only its candidates, in sort order.
                ids = self.updated_between(pred.range_start, pred.range_end)  # type: ignore[attr-defined]
                if ids is not None:
                    by_created = sort_field == "CREATED_AT"
                    keys = sorted(visible[i].ckey if by_created else visible[i].dkey for i in ids)
            elif getattr(pred, "range_attr", None) == "created_ts" and keys is self.by_created:
                keys = _created_slice(keys, pred.range_start, pred.range_end)  # type: ignore[attr-defined]
            elif getattr(pred, "attr_key", None) is not None and (keys is self.by_created or keys is self.by_default):
                # A custom attribute filter walks only the profiles holding that key (sorted once per generation).
                narrowed = self._holders_keys(pred.attr_key, sort_field == "CREATED_AT")  # type: ignore[attr-defined]
                if narrowed is not None:
                    keys = narrowed
        desc = order == "DESC"
        start: int
        if cursor:
            cur = decode_cursor(cursor)
            if cur.get("q") != fingerprint or (cursor_ttl > 0 and now - float(cur.get("t", 0)) > cursor_ttl):
                raise invalid_cursor()
            last = tuple(cur.get("k") or ())
            if len(last) != 2:
                raise invalid_cursor()
            start = bisect.bisect_left(keys, last) - 1 if desc else bisect.bisect_right(keys, last)
            issued = float(cur.get("t", now))
        else:
            start = len(keys) - 1 if desc else 0
            issued = now
        out: list[CustomerRec] = []
        i = start
        step = -1 if desc else 1
        n = len(keys)
        last_key: tuple[str, str] | None = None
        while 0 <= i < n and len(out) < limit:
            key = keys[i]
            rec = visible[key[1]]
            if predicates is None or all(p(rec) for p in predicates):
                out.append(rec)
                last_key = key
            i += step
        more = False
        if len(out) == limit:
            j = i
            while 0 <= j < n:
                rec = visible[keys[j][1]]
                if predicates is None or all(p(rec) for p in predicates):
                    more = True
                    break
                j += step
        next_cursor = encode_cursor({"k": list(last_key), "q": fingerprint, "t": issued}) \
            if more and last_key else None
        total = None
        if count:
            total = len(keys) if predicates is None else sum(
                1 for k in keys if all(p(visible[k[1]]) for p in predicates))
        return out, next_cursor, total


    def _holders_keys(self, key: str, by_created: bool) -> list[tuple[str, str]] | None:
        """Sort keys of the listed profiles holding ``key``, or None when that is most of the index anyway."""
        holders = self.holders.get(key, set())
        if len(holders) > len(self.visible) // 2:
            return None
        if self._narrowed_generation != self.generation:
            self._narrowed.clear()
            self._narrowed_generation = self.generation
        cached = self._narrowed.get((key, by_created))
        if cached is None:
            visible = self.visible
            cached = sorted(visible[c].ckey if by_created else visible[c].dkey for c in holders if c in visible)
            self._narrowed[(key, by_created)] = cached
        return cached


def _created_slice(keys: list[tuple[str, str]], start: float | None, end: float | None) -> list[tuple[str, str]]:
    """The part of ``by_created`` that can hold creation times in ``[start, end)``: a superset, found by bisection.

    ``created_at`` is always ``clock.rfc3339_ms`` of the record's ``created_ts`` (fixed width, floor to the
    millisecond), so ``start <= created_ts`` implies ``rfc3339_ms(start) <= created_at`` and ``created_ts < end``
    implies ``created_at <= rfc3339_ms(end)``; the predicate still decides exactly. Without this a partitioned
    backfill's every first page walked the index from the beginning (O(customers) per partition and page).
    """
    low, high = _sortable_ms(start), _sortable_ms(end)
    lo = bisect.bisect_left(keys, (low,)) if low is not None else 0
    hi = bisect.bisect_left(keys, (high + "\x00",)) if high is not None else len(keys)
    return keys if (lo, hi) == (0, len(keys)) else keys[lo:hi]


def _sortable_ms(ts: float | None) -> str | None:
    """``rfc3339_ms(ts)`` when it sorts like the stored ``created_at`` strings (years 1000-9999), else None."""
    if ts is None:
        return None
    try:
        text = clock.rfc3339_ms(ts)
    except (OverflowError, OSError, ValueError):
        return None
    return text if len(text) == 24 and text[:4].isdigit() else None


def _remove(keys: list[tuple[str, str]], key: tuple[str, str]) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def _remove_u(keys: list[tuple[float, str]], key: tuple[float, str]) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        out = orjson.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(out, dict):
            raise TypeError
        return out
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise invalid_cursor() from None
