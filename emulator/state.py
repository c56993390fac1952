"""In-memory truth for each seller: customers, tombstones, merges, groups, segments, memberships, custom
attributes and the Events API's state.

Every committed change of a customer is a new immutable record (``records.py``), staged into the list/search
index (``index.py``), which may show it only ``index_lag_seconds`` later.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from . import clock
from .attribute_store import AttributeStore
from .attribute_values import AttrValue
from .config import DEFAULT_APPLICATION_ID, PERSONAL, Knobs
from .errors import (
    SquareError,
    bad_request,
    customer_not_found_error,
    error,
    group_not_found_error,
    segment_not_found_error,
)
from .events import EventLog, customer_event
from .index import CustomerIndex
from .records import CustomerRec
from .search import Predicate
from .validation import PUBLIC_FIELDS, has_identity

_NOTE_LABELS = {"given_name": "First Name", "family_name": "Last Name", "company_name": "Company",
                "email_address": "Email", "phone_number": "Phone"}
EventSink = Callable[[str, dict[str, Any]], None]
EVENTS_CHANGES_MAX = 1000  # EnableEvents/DisableEvents calls kept per seller in the truth dump


class MerchantState:
    """All truth for one seller. Methods raise SquareError with Square's bodies on failure."""

    def __init__(self, merchant_id: str, token: str, rng: random.Random, knobs: Knobs, sink: EventSink, *,
                 token_kind: str = PERSONAL, events_enabled: bool | None = None,
                 events_enabled_by: str = "default", next_seq: Callable[[], int] | None = None,
                 application_id: str = DEFAULT_APPLICATION_ID) -> None:
        self.merchant_id = merchant_id
        self.token = token
        self.token_kind = token_kind  # "personal" or "oauth" (the Events API refuses OAuth tokens)
        self.revoked = False
        # Events API state: only events that occur while enabled are ever searchable.
        self.events_enabled = knobs.events_enabled_by_default if events_enabled is None else events_enabled
        self.events_enabled_since: float | None = None
        self.events_changes: list[dict[str, Any]] = []
        if self.events_enabled:
            self._events_change(True, events_enabled_by, clock.now())
        self._next_seq = next_seq
        self.business_name = f"Emulated Seller {merchant_id}"
        self.rng = rng
        self.knobs = knobs
        self.sink = sink
        self.customers: dict[str, CustomerRec] = {}
        self.tombstones: dict[str, dict[str, Any]] = {}
        self.merges: list[dict[str, Any]] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self.deleted_groups: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, dict[str, Any]] = {}
        self.deleted_segments: dict[str, dict[str, Any]] = {}
        self.group_members: dict[str, set[str]] = {}
        self.segment_members: dict[str, set[str]] = {}
        self.idempotency: dict[str, bytes] = {}
        self.group_idempotency: dict[str, str] = {}
        self.index = CustomerIndex()
        self.attributes = AttributeStore(merchant_id, application_id, knobs, has_customer=self.has_customer,
                                         stage=self._stage_attr, record=self.record,
                                         new_uuid=lambda: clock.new_uuid(self.rng))
        self.events = EventLog(knobs.event_log_max)
        self.quiet = False  # seeding: no events
        self._last_created = 0.0

    def tick(self) -> float:
        """Creation time, strictly increasing by at least 1 ms so CREATED_AT order is creation order."""
        ts = max(clock.now(), self._last_created + 0.001)
        self._last_created = ts
        return ts

    # ---- commit helpers -------------------------------------------------------------------------
    def _commit(self, doc: dict[str, Any], created_ts: float, updated_ts: float) -> CustomerRec:
        rec = CustomerRec(doc, created_ts, updated_ts)
        self.customers[rec.id] = rec
        self.index.stage(clock.now() + self.knobs.index_lag_seconds, rec.id, rec)
        return rec

    def _stage_attr(self, cid: str, key: str, value: AttrValue | None) -> None:
        self.index.stage_attr(clock.now() + self.knobs.index_lag_seconds, cid, key, value)

    def emit(self, event_type: str, doc: dict[str, Any], ts: float, merge: dict[str, Any] | None = None) -> None:
        if self.quiet:
            return
        self.record(customer_event(self.merchant_id, event_type, doc, event_id=clock.new_uuid(self.rng), ts=ts,
                                   merge=merge), ts)

    def record(self, event: dict[str, Any], ts: float) -> None:
        """Keep an event for SearchEvents and hand it to webhook delivery (nothing while seeding)."""
        if self.quiet:
            return
        # Searchable only if events were enabled when it occurred, and the token still had access then.
        access = not self.revoked or self.knobs.revoked_events_searchable
        self.events.append(ts, event, searchable=self.events_enabled and access,
                           seq=self._next_seq() if self._next_seq is not None else None)
        self.sink(self.merchant_id, event)

    # ---- Events API state -----------------------------------------------------------------------
    def _events_change(self, enabled: bool, by: str, ts: float) -> None:
        self.events_changes.append({"enabled": enabled, "at": clock.rfc3339_ms(ts), "by": by})
        if len(self.events_changes) > EVENTS_CHANGES_MAX:
            del self.events_changes[: len(self.events_changes) - EVENTS_CHANGES_MAX]
        if enabled and (self.events_enabled_since is None or not self.events_enabled):
            self.events_enabled_since = ts
        elif not enabled:
            self.events_enabled_since = None
        self.events_enabled = enabled

    def set_events_enabled(self, enabled: bool, by: str) -> None:
        """EnableEvents / DisableEvents: from now on events are (not) searchable; the past is unchanged.

        ``by`` is who switched it: ``seller`` (the seller's token), ``application`` (the application token)."""
        self._events_change(enabled, by, clock.now())

    def apply_default_events(self, enabled: bool) -> None:
        """The knob ``events_enabled_by_default`` changed at runtime: follow it from now on, unless this
        seller's events were switched by EnableEvents/DisableEvents (those calls win)."""
        if enabled != self.events_enabled and all(c["by"] == "default" for c in self.events_changes):
            self._events_change(enabled, "default", clock.now())

    def events_dump(self) -> dict[str, Any]:
        since = self.events_enabled_since
        return {"enabled": self.events_enabled, "enabled_since": clock.rfc3339_ms(since) if since is not None else None,
                "changes": list(self.events_changes), "recorded": len(self.events.entries),
                "searchable": self.events.count_searchable()}

    def has_customer(self, cid: str) -> bool:
        return cid in self.customers

    def new_customer_id(self) -> str:
        while True:
            cid = clock.new_id(self.rng)
            if cid not in self.customers and cid not in self.tombstones:
                return cid

    # ---- customers ------------------------------------------------------------------------------
    def resolve(self, cid: str) -> CustomerRec | None:
        """Live record for an ID, following merge redirects (A merged into C returns C)."""
        seen = 0
        while seen < 64:
            rec = self.customers.get(cid)
            if rec is not None:
                return rec
            tomb = self.tombstones.get(cid)
            if tomb is None or not tomb.get("merged_into"):
                return None
            cid = tomb["merged_into"]
            seen += 1
        return None

    def get(self, cid: str, *, follow_merges: bool = True) -> CustomerRec:
        rec = self.resolve(cid) if follow_merges else self.customers.get(cid)
        if rec is None:
            raise customer_not_found_error(cid)
        return rec

    def create_customer(self, fields: dict[str, Any], *, source: str = "THIRD_PARTY",
                        idempotency_key: str | None = None, ts: float | None = None,
                        require_identity: bool = True) -> tuple[CustomerRec, bytes | None]:
        """Returns the record and, for a replayed idempotency key, the original response body."""
        if idempotency_key and idempotency_key in self.idempotency:
            return self._replay_rec(idempotency_key), self.idempotency[idempotency_key]
        if require_identity and not has_identity(fields):
            raise SquareError(400, [error(
                "BAD_REQUEST",
                "At least one of the following fields must be set: given_name, family_name, company_name, "
                "email_address, phone_number.")])
        ts = self.tick() if ts is None else ts
        doc: dict[str, Any] = {"id": self.new_customer_id(), "created_at": clock.rfc3339_ms(ts),
                               "updated_at": clock.rfc3339_s(ts)}
        for key, value in fields.items():
            if value is None or value == "" or (key == "address" and not value):
                continue
            if key == "address":
                value = {k: v for k, v in value.items() if v not in (None, "")} or None
            doc[key] = value
        doc["preferences"] = {"email_unsubscribed": False}
        doc["creation_source"] = source
        doc["version"] = 0
        rec = self._commit(doc, ts, float(int(ts)))
        if idempotency_key:
            self.idempotency[idempotency_key] = b'{"customer":' + rec.raw + b"}"
        self.emit("customer.created", rec.doc, ts)
        return rec, None

    def _replay_rec(self, key: str) -> CustomerRec:
        body = orjson.loads(self.idempotency[key])
        rec = self.resolve(body["customer"]["id"])
        if rec is None:
            raise customer_not_found_error(body["customer"]["id"])
        return rec

    def check_version(self, rec: CustomerRec, version: Any) -> None:
        if version is None:
            return
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad_request("`version` must be an integer.", field="version", code="INVALID_VALUE")
        if version != rec.version:
            raise SquareError(self.knobs.stale_version_status, [error(
                self.knobs.stale_version_code,
                f"The customer version ({version}) does not match the current version ({rec.version}).",
                field="version")])

    def update_customer(self, cid: str, fields: dict[str, Any], version: Any, *, clear_null: bool,
                        preferences: dict[str, Any] | None = None, allow_hide: bool = True) -> CustomerRec:
        """Sparse update. ``preferences`` is read-only in the API; only the admin ("Dashboard") sets it.

        An update that clears every public field hides the profile from List/Search (it stays retrievable);
        with ``allow_hide=False`` (knob ``update_can_hide_profile`` off) that is refused instead."""
        rec = self.customers.get(cid)
        if rec is None:
            raise customer_not_found_error(cid)  # merged profiles must be updated by their new ID
        self.check_version(rec, version)
        doc = dict(rec.doc)
        if preferences is not None:
            doc["preferences"] = {"email_unsubscribed": bool(preferences.get("email_unsubscribed", False))}
        changed = False
        for key, value in fields.items():
            if key == "address":
                if value is None:
                    if clear_null and "address" in doc:
                        del doc["address"]
                        changed = True
                    continue
                if not value:
                    continue  # "address": {} changes nothing
                addr = dict(doc.get("address") or {})
                for akey, avalue in value.items():
                    if avalue is None and not clear_null:
                        continue
                    if avalue in (None, ""):
                        changed |= addr.pop(akey, None) is not None
                    elif addr.get(akey) != avalue:
                        addr[akey] = avalue
                        changed = True
                if addr:
                    doc["address"] = addr
                else:
                    doc.pop("address", None)
                continue
            if value is None and not clear_null:
                continue
            if value in (None, ""):
                changed |= doc.pop(key, None) is not None
            elif doc.get(key) != value:
                doc[key] = value
                changed = True
        del changed  # Square commits (and bumps version) even when values are unchanged
        if not allow_hide and rec.public and not any(doc.get(f) for f in PUBLIC_FIELDS):
            raise SquareError(400, [error(  # UNCONFIRMED: Square may instead let the profile become hidden
                "BAD_REQUEST",
                "At least one of the following fields must be set: given_name, family_name, company_name, "
                "email_address, phone_number.")])
        return self._touch(rec, doc, "customer.updated")

    def _touch(self, rec: CustomerRec, doc: dict[str, Any], event_type: str | None) -> CustomerRec:
        ts = max(clock.now(), rec.updated_ts)
        doc["updated_at"] = clock.rfc3339_s(ts)
        doc["version"] = rec.version + 1
        new = self._commit(doc, rec.created_ts, float(int(ts)))
        if event_type:
            self.emit(event_type, new.doc, ts)
        return new

    def delete_customer(self, cid: str, version: Any, *, merged_into: str | None = None,
                        merge: dict[str, Any] | None = None, attribute_events: bool | None = None) -> None:
        """Its custom attribute values become unreachable; they fire ``.deleted`` events only with
        ``attribute_events`` (default: knob ``customer_delete_fires_attribute_events``)."""
        rec = self.customers.get(cid)
        if rec is None:
            raise customer_not_found_error(cid)
        self.check_version(rec, version)
        ts = clock.now()
        del self.customers[cid]
        self.index.stage(ts + self.knobs.index_lag_seconds, cid, None)
        for gid in rec.doc.get("group_ids") or ():
            self.group_members.get(gid, set()).discard(cid)
        for sid in rec.doc.get("segment_ids") or ():
            self.segment_members.get(sid, set()).discard(cid)
        self.tombstones[cid] = {"deleted_at": clock.rfc3339_ms(ts), "merged_into": merged_into,
                                "version": rec.version}
        self.emit("customer.deleted", rec.doc, ts, merge)
        fire = self.knobs.customer_delete_fires_attribute_events if attribute_events is None else attribute_events
        self.attributes.customer_deleted(cid, fire=fire)

    def set_group(self, cid: str, gid: str, member: bool) -> None:
        rec = self.customers.get(cid)
        if rec is None:
            raise customer_not_found_error(cid)
        if gid not in self.groups:
            raise group_not_found_error(gid)
        ids = list(rec.doc.get("group_ids") or [])
        if (gid in ids) == member:
            return  # UNCONFIRMED: an idempotent no-op neither bumps version nor fires an event
        if member:
            ids.append(gid)
            self.group_members.setdefault(gid, set()).add(cid)
        else:
            ids.remove(gid)
            self.group_members.get(gid, set()).discard(cid)
        doc = dict(rec.doc)
        doc["group_ids"] = ids or None
        self._touch(rec, doc, "customer.updated")

    def set_segment(self, cid: str, sid: str, member: bool) -> CustomerRec:
        """Segment membership: no version bump and no event (documented)."""
        rec = self.customers.get(cid)
        if rec is None:
            raise customer_not_found_error(cid)
        if sid not in self.segments:
            raise segment_not_found_error(sid)
        ids = list(rec.doc.get("segment_ids") or [])
        if (sid in ids) == member:
            return rec
        if member:
            ids.append(sid)
            self.segment_members.setdefault(sid, set()).add(cid)
        else:
            ids.remove(sid)
            self.segment_members.get(sid, set()).discard(cid)
        doc = dict(rec.doc)
        doc["segment_ids"] = ids or None
        updated_ts = rec.updated_ts
        if self.knobs.segment_change_touches_updated_at:
            updated_ts = float(int(clock.now()))
            doc["updated_at"] = clock.rfc3339_s(updated_ts)
        return self._commit(doc, rec.created_ts, updated_ts)

    def merge(self, ids: list[str]) -> CustomerRec:
        """Dashboard-style merge: a new MERGE profile, then every source deleted (all with event_context)."""
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise bad_request("A merge needs at least two distinct customer IDs.")
        recs = [self.customers.get(i) for i in ids]
        missing = [i for i, r in zip(ids, recs, strict=True) if r is None]
        if missing:
            raise customer_not_found_error(missing[0])
        live = [r for r in recs if r is not None]
        ordered = sorted(live, key=lambda r: (r.updated_ts, r.version), reverse=True)
        fields: dict[str, Any] = {}
        lost: list[str] = []
        for rec in ordered:  # newest profile wins; older ones fill the gaps
            for key, value in rec.doc.items():
                if key in ("id", "created_at", "updated_at", "version", "creation_source", "group_ids",
                           "segment_ids", "preferences"):
                    continue
                if key in fields and fields[key] != value and key in _NOTE_LABELS:
                    lost.append(f"{_NOTE_LABELS[key]}: {value}")
                fields.setdefault(key, value)
        if self.knobs.merge_writes_note and lost:
            # Observed on real merged profiles (FACTS §2): Square records what it dropped in `note`.
            stamp = time.strftime("%m/%d/%Y", time.gmtime(clock.now()))
            fields["note"] = f" Merged on {stamp}. Following fields were not transferred to the current " \
                             f"customer:{' '.join(lost)}"
        groups = sorted({g for r in live for g in r.doc.get("group_ids") or ()})
        segments = sorted({s for r in live for s in r.doc.get("segment_ids") or ()})
        ts = self.tick()
        new_id = self.new_customer_id()
        merge_ctx = {"from_customer_ids": list(ids), "to_customer_id": new_id}
        doc: dict[str, Any] = {"id": new_id, "created_at": clock.rfc3339_ms(ts), "updated_at": clock.rfc3339_s(ts),
                               **fields, "preferences": {"email_unsubscribed": False}, "creation_source": "MERGE",
                               "group_ids": groups or None, "segment_ids": segments or None, "version": 0}
        new = self._commit(doc, ts, float(int(ts)))
        for gid in groups:
            self.group_members.setdefault(gid, set()).add(new_id)
        for sid in segments:
            self.segment_members.setdefault(sid, set()).add(new_id)
        self.emit("customer.created", new.doc, ts, merge_ctx)
        fire = self.knobs.merge_fires_attribute_events
        if self.knobs.merge_custom_attributes == "follow":  # UNCONFIRMED; "drop": they go with the sources
            self.attributes.merged([r.id for r in ordered], new_id, fire=fire)
        for cid in ids:
            self.delete_customer(cid, None, merged_into=new_id, merge=merge_ctx, attribute_events=fire)
            self.merges.append({"from_customer_id": cid, "to_customer_id": new_id,
                                "merged_at": clock.rfc3339_ms(ts)})
        return new

    # ---- list / search --------------------------------------------------------------------------
    def page(self, *, sort_field: str, order: str, limit: int, cursor: str | None, fingerprint: str,
             predicates: list[Predicate] | None, count: bool) -> tuple[list[CustomerRec], str | None, int | None]:
        """One page of the (possibly lagging) index with keyset cursors tied to the query fingerprint."""
        return self.index.page(clock.now(), sort_field=sort_field, order=order, limit=limit, cursor=cursor,
                               fingerprint=fingerprint, predicates=predicates, count=count,
                               cursor_ttl=self.knobs.cursor_ttl_seconds)

    # ---- groups ---------------------------------------------------------------------------------
    def create_group(self, name: str, idempotency_key: str | None) -> dict[str, Any]:
        if idempotency_key and idempotency_key in self.group_idempotency:
            gid = self.group_idempotency[idempotency_key]
            return self.groups.get(gid) or {"id": gid, "name": name}
        ts = clock.now()
        gid = clock.new_id(self.rng)
        group = {"id": gid, "name": name, "created_at": clock.rfc3339_ms(ts), "updated_at": clock.rfc3339_s(ts)}
        self.groups[gid] = group
        self.group_members[gid] = set()
        if idempotency_key:
            self.group_idempotency[idempotency_key] = gid
        return group

    def get_group(self, gid: str) -> dict[str, Any]:
        group = self.groups.get(gid)
        if group is None:
            raise group_not_found_error(gid)
        return group

    def update_group(self, gid: str, name: str) -> dict[str, Any]:
        group = dict(self.get_group(gid))
        group["name"] = name
        group["updated_at"] = clock.rfc3339_s(clock.now())
        self.groups[gid] = group
        return group

    def delete_group(self, gid: str) -> None:
        self.get_group(gid)
        del self.groups[gid]
        self.deleted_groups[gid] = {"deleted_at": clock.rfc3339_ms(clock.now())}
        for cid in sorted(self.group_members.pop(gid, set())):
            rec = self.customers.get(cid)
            if rec is None:
                continue
            doc = dict(rec.doc)
            doc["group_ids"] = [g for g in doc.get("group_ids") or () if g != gid] or None
            if self.knobs.group_delete_bumps_version:
                self._touch(rec, doc, "customer.updated")
            else:
                self._commit(doc, rec.created_ts, rec.updated_ts)

    # ---- segments -------------------------------------------------------------------------------
    def create_segment(self, name: str, sid: str | None = None) -> dict[str, Any]:
        ts = clock.now()
        sid = sid or f"gv2:{clock.new_id(self.rng)}"
        if sid in self.segments:
            raise SquareError(409, [error("CONFLICT", f"Segment with ID `{sid}` already exists.")])
        segment = {"id": sid, "name": name, "created_at": clock.rfc3339_ms(ts), "updated_at": clock.rfc3339_s(ts)}
        self.segments[sid] = segment
        self.segment_members[sid] = set()
        self.deleted_segments.pop(sid, None)
        return segment

    def delete_segment(self, sid: str) -> None:
        if sid not in self.segments:
            raise segment_not_found_error(sid)
        for cid in sorted(self.segment_members.get(sid, set())):
            self.set_segment(cid, sid, False)
        del self.segments[sid]
        self.segment_members.pop(sid, None)
        self.deleted_segments[sid] = {"deleted_at": clock.rfc3339_ms(clock.now())}

    # ---- truth dump / snapshot ------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "merchant_id": self.merchant_id,
            "customers": {cid: rec.doc for cid, rec in self.customers.items()},
            "tombstones": dict(self.tombstones),
            "merges": list(self.merges),
            "groups": dict(self.groups),
            "deleted_groups": dict(self.deleted_groups),
            "segments": dict(self.segments),
            "deleted_segments": dict(self.deleted_segments),
            "group_members": {g: sorted(m) for g, m in self.group_members.items()},
            "segment_members": {s: sorted(m) for s, m in self.segment_members.items()},
            "events_api": self.events_dump(),
            **self.attributes.dump(self.customers.__contains__),
        }

    def snapshot(self) -> dict[str, Any]:
        out = self.dump()
        out["token"] = self.token
        out["token_kind"] = self.token_kind
        out["revoked"] = self.revoked
        out["customer_ts"] = {cid: [r.created_ts, r.updated_ts] for cid, r in self.customers.items()}
        out["events"] = self.events.to_json()
        out["events_state"] = {"enabled": self.events_enabled, "enabled_since": self.events_enabled_since,
                               "changes": list(self.events_changes)}
        out["idempotency"] = {k: v.decode() for k, v in self.idempotency.items()}
        out["group_idempotency"] = dict(self.group_idempotency)
        out["custom_attribute_store"] = self.attributes.to_json()  # every owner's, hidden ones included
        return out

    def restore(self, snap: dict[str, Any]) -> None:
        times = snap.get("customer_ts", {})
        self.customers = {}
        for cid, doc in snap["customers"].items():
            created, updated = times.get(cid) or [clock.parse_rfc3339(doc["created_at"]),
                                                  clock.parse_rfc3339(doc["updated_at"])]
            self.customers[cid] = CustomerRec(doc, created, updated)
        self.tombstones = dict(snap.get("tombstones", {}))
        self.merges = list(snap.get("merges", []))
        self.groups = dict(snap.get("groups", {}))
        self.deleted_groups = dict(snap.get("deleted_groups", {}))
        self.segments = dict(snap.get("segments", {}))
        self.deleted_segments = dict(snap.get("deleted_segments", {}))
        self.group_members = {g: set(m) for g, m in snap.get("group_members", {}).items()}
        self.segment_members = {s: set(m) for s, m in snap.get("segment_members", {}).items()}
        self.revoked = bool(snap.get("revoked", False))
        self.token_kind = str(snap.get("token_kind", self.token_kind))
        self.events = EventLog(self.knobs.event_log_max)
        for entry in snap.get("events", []):
            # Older snapshots hold [ts, event]: those events were searchable (the old default).
            searchable = bool(entry[2]) if len(entry) > 2 else True
            seq = int(entry[3]) if len(entry) > 3 else (self._next_seq() if self._next_seq is not None else None)
            self.events.append(float(entry[0]), entry[1], searchable=searchable, seq=seq)
        events_state = snap.get("events_state")
        if events_state is not None:
            self.events_enabled = bool(events_state["enabled"])
            self.events_enabled_since = events_state.get("enabled_since")
            self.events_changes = list(events_state.get("changes", []))
        self.idempotency = {k: v.encode() for k, v in snap.get("idempotency", {}).items()}
        self.group_idempotency = dict(snap.get("group_idempotency", {}))
        if "custom_attribute_store" in snap:
            self.attributes.load(snap["custom_attribute_store"])
        else:
            self.attributes.load_legacy(snap.get("custom_attribute_definitions", {}), snap.get("custom_attributes", {}))
        self.reindex()

    def reindex(self, records: Iterable[CustomerRec] | None = None) -> None:
        """Rebuild the list/search index from the truth at once (seeding, restore)."""
        self.index = CustomerIndex(records or self.customers.values(), self.attributes.values)
