"""One seller's custom attributes: the definitions of every owner and the values on every profile, who may change
what, the webhook events a change fires, and what the application (``app_id``, the one all tokens belong to) sees.

Filed under qualified keys (``visibility.py``). A change never touches the customer record (no ``version`` bump, no
``customer.updated``); values reach the search filter through the lagging index (``stage``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import clock
from .attribute_values import AttrValue, check_value, stamp
from .config import Knobs
from .errors import SquareError, bad_request, customer_not_found_error, error
from .events import attribute_event
from .visibility import (
    READ_WRITE_VALUES,
    SELLER,
    SIMPLE_KEY,
    VISIBILITIES,
    internal_key,
    owner_of,
    qualify,
    seen_key,
    simple_of,
    values_writable,
    visible,
)

DEFINITION_FIELDS = frozenset(("key", "schema", "name", "description", "visibility", "version", "updated_at",
                               "created_at"))
Stage = Callable[[str, str, AttrValue | None], None]
Record = Callable[[dict[str, Any], float], None]
VALUE_EVENT, DEFINITION_EVENT = "customer.custom_attribute", "customer.custom_attribute_definition"


def definition_not_found(key: str) -> SquareError:
    return SquareError(404, [error("NOT_FOUND", f"Custom attribute definition with key `{key}` not found.")])


def value_not_found(key: str, cid: str) -> SquareError:
    return SquareError(404, [error("NOT_FOUND", f"Custom attribute with key `{key}` not found for customer `{cid}`.")])


def forbidden(detail: str) -> SquareError:
    # UNCONFIRMED: status and code of a write the application may not make (another owner's definition, a
    # READ_ONLY value of another owner).
    return SquareError(403, [error("FORBIDDEN", detail, category="AUTHENTICATION_ERROR")])


class AttributeStore:
    """Definitions and values of one seller. ``actor`` on a write is the application making it through the public
    API (its permissions are checked) or ``None`` for the admin API (acting as the owner: no checks)."""

    def __init__(self, merchant_id: str, app_id: str, knobs: Knobs, *, has_customer: Callable[[str], bool],
                 stage: Stage, record: Record, new_uuid: Callable[[], str]) -> None:
        self.merchant_id = merchant_id
        self.app_id = app_id
        self.knobs = knobs
        self.has_customer = has_customer
        self._stage = stage
        self._record = record
        self._new_uuid = new_uuid
        self.definitions: dict[str, dict[str, Any]] = {}  # qualified key -> definition (its `key` qualified)
        self.values: dict[str, dict[str, AttrValue]] = {}  # customer id -> qualified key -> value
        self.idempotency: dict[str, str] = {}  # CreateCustomerCustomAttributeDefinition idempotency key -> key

    # ---- the application's view ---------------------------------------------------------------------
    def visible(self, qkey: str) -> bool:
        definition = self.definitions.get(qkey)
        return definition is not None and visible(definition["visibility"], qkey, self.app_id)

    def resolve(self, key: str) -> str:
        """The qualified key the application means by ``key`` (a simple key is its own); 404 if it sees none."""
        qkey = internal_key(key, self.app_id)
        if not self.visible(qkey):
            raise definition_not_found(key)
        return qkey

    def definition_view(self, qkey: str) -> dict[str, Any]:
        definition = self.definitions[qkey]
        key = seen_key(qkey, self.app_id)
        return definition if key == qkey else {**definition, "key": key}

    def value_view(self, qkey: str, value: AttrValue, with_definition: bool = False) -> dict[str, Any]:
        out = value.render(seen_key(qkey, self.app_id), self.definitions[qkey]["visibility"])
        if with_definition:
            out["definition"] = self.definition_view(qkey)
        return out

    def definitions_view(self) -> list[dict[str, Any]]:
        return [self.definition_view(k) for k in self.definitions if self.visible(k)]

    def values_view(self, cid: str, with_definitions: bool = False) -> list[dict[str, Any]]:
        values = self.values.get(cid)
        if not values:
            return []
        return [self.value_view(k, v, with_definitions) for k, v in values.items() if self.visible(k)]

    def filter_key(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The search filter's key as the application wrote it: (qualified key, definition), None if unseen."""
        qkey = internal_key(str(key), self.app_id)
        return (qkey, self.definitions[qkey]) if self.visible(qkey) else None

    # ---- definitions --------------------------------------------------------------------------------
    def create_definition(self, owner: str, spec: dict[str, Any], idempotency_key: str | None = None) -> str:
        """A new definition owned by ``owner`` (an application ID, or ``square`` for a Dashboard custom field:
        key ``square:{uuid}``, always ``VISIBILITY_READ_WRITE_VALUES``). Returns its qualified key."""
        if idempotency_key and self.idempotency.get(idempotency_key) in self.definitions:
            return self.idempotency[idempotency_key]  # a replay (of a definition that still exists)
        key = spec.get("key")
        if owner == SELLER and key is None:
            key = self._new_uuid()
        if not isinstance(key, str) or not SIMPLE_KEY.match(key):
            raise bad_request("`key` must be 1-60 characters of A-Z, a-z, 0-9, ., _ or -.", field="key",
                              code="INVALID_VALUE")
        qkey = qualify(owner, key)
        if qkey in self.definitions:
            raise SquareError(409, [error("CONFLICT", f"A custom attribute definition with key `{key}` already "
                                          "exists.", field="key")])
        if not isinstance(spec.get("schema"), dict):
            raise SquareError(400, [error("MISSING_REQUIRED_PARAMETER", "Field must be set", field="schema")])
        visibility = READ_WRITE_VALUES if owner == SELLER else spec.get("visibility") or "VISIBILITY_HIDDEN"
        _check_visibility(visibility)
        ts = clock.rfc3339_ms(clock.now())
        definition = {"key": qkey, "schema": spec["schema"], "name": spec.get("name"),
                      "description": spec.get("description"), "visibility": visibility, "version": 1,
                      "updated_at": ts, "created_at": ts}
        self.definitions[qkey] = {k: v for k, v in definition.items() if v is not None}
        if idempotency_key:
            self.idempotency[idempotency_key] = qkey
        self._definition_events(qkey, "created", None, self.definitions[qkey])
        return qkey

    def _owned_definition(self, qkey: str, actor: str | None, key: str) -> dict[str, Any]:
        definition = self.definitions.get(qkey)
        if definition is None or (actor is not None and not visible(definition["visibility"], qkey, actor)):
            raise definition_not_found(key)
        if actor is not None and owner_of(qkey) != actor:
            raise forbidden(f"Only the owner of custom attribute definition `{key}` can change it.")
        return definition

    def update_definition(self, qkey: str, spec: dict[str, Any], *, actor: str | None,
                          key: str | None = None) -> dict[str, Any]:
        """Sparse update of ``name``, ``description``, ``visibility``, ``schema``, guarded by ``version``."""
        current = self._owned_definition(qkey, actor, key or qkey)
        _stale(self.knobs, current["version"], spec.get("version"))
        new = dict(current)
        for field in ("name", "description", "visibility", "schema"):
            if spec.get(field) is not None:
                new[field] = spec[field]
        _check_visibility(new["visibility"])
        if owner_of(qkey) == SELLER:
            new["visibility"] = READ_WRITE_VALUES
        new["version"] = current["version"] + 1
        new["updated_at"] = clock.rfc3339_ms(max(clock.now(), clock.parse_rfc3339(current["updated_at"])))
        self.definitions[qkey] = new
        self._definition_events(qkey, "updated", current, new)
        return new

    def delete_definition(self, qkey: str, *, actor: str | None, key: str | None = None) -> None:
        """Deletes its values on every profile too (knob ``definition_delete_fires_value_events``)."""
        definition = self._owned_definition(qkey, actor, key or qkey)
        fire = self.knobs.definition_delete_fires_value_events
        for cid, values in list(self.values.items()):
            if qkey in values:
                self._drop_value(cid, qkey, fire)
        del self.definitions[qkey]
        self._definition_events(qkey, "deleted", definition, definition)

    # ---- values -------------------------------------------------------------------------------------
    def _writable_definition(self, cid: str, qkey: str, actor: str | None, key: str) -> dict[str, Any]:
        if not self.has_customer(cid):
            raise customer_not_found_error(cid)
        definition = self.definitions.get(qkey)
        if definition is None or (actor is not None and not visible(definition["visibility"], qkey, actor)):
            raise definition_not_found(key)
        if actor is not None and not values_writable(definition["visibility"], qkey, actor):
            raise forbidden(f"Values of custom attribute definition `{key}` are read-only for this application.")
        return definition

    def upsert(self, cid: str, qkey: str, value: Any, version: Any, *, actor: str | None,
               key: str | None = None) -> AttrValue:
        """Create (version 1) or update (version + 1) a value; ``version`` guards against stale writes."""
        definition = self._writable_definition(cid, qkey, actor, key or qkey)
        check_value(definition, key or qkey, value)
        values = self.values.setdefault(cid, {})
        current = values.get(qkey)
        now = clock.now()
        if current is None:
            _stale(self.knobs, 0, version if version not in (None, 0) else None)
            text, ts = stamp(now)
            new = AttrValue(value, 1, text, text, ts)
        else:
            _stale(self.knobs, current.version, version)
            text, ts = stamp(max(now, current.updated_ts))
            new = AttrValue(value, current.version + 1, current.created_at, text, ts)
        values[qkey] = new
        self._stage(cid, qkey, new)
        self._value_events(cid, qkey, new, deleted=False)
        return new

    def get_value(self, cid: str, qkey: str, key: str) -> AttrValue:
        if not self.has_customer(cid):
            raise customer_not_found_error(cid)
        value = self.values.get(cid, {}).get(qkey)
        if value is None:
            raise value_not_found(key, cid)
        return value

    def delete_value(self, cid: str, qkey: str, *, actor: str | None, key: str | None = None) -> None:
        self._writable_definition(cid, qkey, actor, key or qkey)
        if qkey not in self.values.get(cid, {}):
            raise value_not_found(key or qkey, cid)
        self._drop_value(cid, qkey, True)

    def _drop_value(self, cid: str, qkey: str, fire: bool) -> None:
        values = self.values[cid]
        last = values.pop(qkey)
        if not values:
            del self.values[cid]
        self._stage(cid, qkey, None)
        if fire:
            self._value_events(cid, qkey, last, deleted=True)

    # ---- profiles deleted and merged ----------------------------------------------------------------
    def customer_deleted(self, cid: str, *, fire: bool) -> None:
        """The profile's values become unreachable (and unsearchable once the index catches up)."""
        for qkey in list(self.values.get(cid, ())):
            self._drop_value(cid, qkey, fire)

    def merged(self, sources: Iterable[str], new_id: str, *, fire: bool) -> None:
        """Values follow to the new profile, the newest-updated source's first (knob ``merge_custom_attributes``)."""
        landed: dict[str, AttrValue] = {}
        for cid in sources:
            for qkey, value in self.values.get(cid, {}).items():
                landed.setdefault(qkey, value)
        if not landed:
            return
        self.values[new_id] = landed
        for qkey, value in landed.items():
            self._stage(new_id, qkey, value)
            if fire:
                self._value_events(new_id, qkey, value, deleted=False)

    # ---- events -------------------------------------------------------------------------------------
    def _emit(self, event_type: str, data_type: str, data_id: str, obj: dict[str, Any], deleted: bool) -> None:
        ts = clock.now()
        wrapped = self.knobs.custom_attribute_event_shape == "wrapped"
        self._record(attribute_event(self.merchant_id, event_type, data_type=data_type, data_id=data_id, obj=obj,
                                     deleted=deleted, wrapped=wrapped, event_id=self._new_uuid(), ts=ts), ts)

    def _owned_obj(self, obj: dict[str, Any], qkey: str) -> dict[str, Any]:
        return obj if self.knobs.owned_event_keys_qualified else {**obj, "key": simple_of(qkey)}

    def _value_events(self, cid: str, qkey: str, value: AttrValue, *, deleted: bool) -> None:
        """``.visible.*`` when the application sees the definition, plus ``.owned.*`` when it owns it."""
        definition = self.definitions.get(qkey)
        if definition is None or not visible(definition["visibility"], qkey, self.app_id):
            return
        action = "deleted" if deleted else "updated"
        obj = value.render(qkey, definition["visibility"])
        data_id = f"{qkey}:CUSTOMER:{cid}"
        if owner_of(qkey) == self.app_id:
            self._emit(f"{VALUE_EVENT}.owned.{action}", "custom_attribute", data_id, self._owned_obj(obj, qkey),
                       deleted)
        self._emit(f"{VALUE_EVENT}.visible.{action}", "custom_attribute", data_id, obj, deleted)

    def _definition_events(self, qkey: str, action: str, before: dict[str, Any] | None,
                           after: dict[str, Any]) -> None:
        """UNCONFIRMED: a visibility change fires ``.visible.updated`` if the application saw the definition
        before or after it (so it learns it went HIDDEN)."""
        seen = visible(after["visibility"], qkey, self.app_id) or (
            before is not None and visible(before["visibility"], qkey, self.app_id))
        if not seen:
            return
        if owner_of(qkey) == self.app_id:
            self._emit(f"{DEFINITION_EVENT}.owned.{action}", "custom_attribute_definition", qkey,
                       self._owned_obj(after, qkey), action == "deleted")
        self._emit(f"{DEFINITION_EVENT}.visible.{action}", "custom_attribute_definition", qkey, after,
                   action == "deleted")

    # ---- truth dump and snapshot --------------------------------------------------------------------
    def dump(self, live: Callable[[str], bool]) -> dict[str, Any]:
        """What the application sees: definitions by their key as it sees it, values of live profiles."""
        values: dict[str, dict[str, Any]] = {}
        for cid, held in self.values.items():
            if live(cid):
                seen = {seen_key(k, self.app_id): self.value_view(k, v) for k, v in held.items() if self.visible(k)}
                if seen:
                    values[cid] = seen
        return {"custom_attribute_definitions": {d["key"]: d for d in self.definitions_view()},
                "custom_attributes": values}

    def to_json(self) -> dict[str, Any]:
        return {"definitions": dict(self.definitions), "idempotency": dict(self.idempotency),
                "values": {cid: {k: v.to_json() for k, v in held.items()} for cid, held in self.values.items()}}

    def load(self, snap: dict[str, Any]) -> None:
        self.definitions = dict(snap.get("definitions", {}))
        self.idempotency = dict(snap.get("idempotency", {}))
        self.values = {cid: {k: AttrValue.from_json(v) for k, v in held.items()}
                       for cid, held in snap.get("values", {}).items()}

    def load_legacy(self, definitions: dict[str, Any], values: dict[str, dict[str, Any]]) -> None:
        """Snapshots of before owners existed: keys are the application's own (or qualified) keys."""
        self.definitions = {}
        for key, definition in definitions.items():
            qkey = internal_key(key, self.app_id)
            self.definitions[qkey] = {**definition, "key": qkey}
        self.values = {}
        for cid, held in values.items():
            self.values[cid] = {internal_key(k, self.app_id): AttrValue(
                a["value"], int(a["version"]), a["created_at"], a["updated_at"], clock.parse_rfc3339(a["updated_at"]))
                for k, a in held.items()}


def _check_visibility(visibility: Any) -> None:
    if visibility not in VISIBILITIES:
        raise bad_request(f"`{visibility}` is not a valid enum value for `visibility`.", code="INVALID_ENUM_VALUE",
                          field="visibility")


def _stale(knobs: Knobs, current: int, given: Any) -> None:
    if given is not None and given != current:
        raise SquareError(knobs.stale_version_status, [error(
            knobs.stale_version_code, f"The version ({given}) does not match the current version ({current}).",
            field="version")])
