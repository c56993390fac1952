"""The one door between the receiver and the worker: the event job payload.

The receiver builds it with :func:`build_event_job`; the worker reads it with :func:`read_event_job`. Neither
side imports the other's code. A customer event's payload is small and free of customer PII (names, emails,
phones, addresses): the worker re-fetches the profile from Square anyway. A custom-attribute event's payload
carries the changed value or definition (``object``), so that it is applied without any Square request; that
value may be personal data, so it lives in Redis only until its job finishes (jobs keep no result) and is never
written to the inbox (:func:`inbox_payload`) or a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from square_mirror.constants import (
    CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES,
    CUSTOM_ATTRIBUTE_EVENT_TYPES,
    JOB_PAYLOAD_VERSION,
)


class InvalidEnvelope(ValueError):
    """A webhook body or job payload lacks what the pipeline needs; the message says which field."""


@dataclass(frozen=True, slots=True)
class EventJob:
    merchant_id: str
    type: str
    event_id: str
    created_at: str | None
    customer_id: str | None
    version: int | None
    deleted: bool
    event_context: dict[str, Any] | None
    received_at: str | None = None
    source: str = "webhook"  # or "events_api" when reconcile replays SearchEvents
    object: dict[str, Any] | None = None  # a custom-attribute event's value or definition (see the module doc)

    @property
    def custom_attribute_key(self) -> str | None:
        """The key of a custom-attribute or definition event's object, as the payload gives it."""
        key = (self.object or {}).get("key")
        return key if isinstance(key, str) and key else None

    @property
    def merge(self) -> tuple[list[str], str] | None:
        """The (from_customer_ids, to_customer_id) pair of a merge event, the only place Square states it."""
        merge = (self.event_context or {}).get("merge")
        if not isinstance(merge, dict):
            return None
        sources = merge.get("from_customer_ids")
        target = merge.get("to_customer_id")
        if not isinstance(target, str) or not target or not isinstance(sources, list):
            return None
        return [s for s in sources if isinstance(s, str) and s], target


def _require_str(envelope: Mapping[str, Any], key: str) -> str:
    value = envelope.get(key)
    if type(value) is not str or not value or value.isspace():
        raise InvalidEnvelope(f"missing or empty {key!r}")
    if len(value) > 256:
        raise InvalidEnvelope(f"{key!r} is too long")
    return value


def build_event_job(
    envelope: Mapping[str, Any], *, received_at: str | None = None, source: str = "webhook"
) -> dict[str, Any]:
    """Turn a Square event envelope (webhook body or SearchEvents item) into the job payload.

    Nested objects are checked with ``isinstance(x, dict)``: they come from a JSON parser, and the ABC check
    of ``Mapping`` costs several times more on the receiver's hot path.
    """
    merchant_id = _require_str(envelope, "merchant_id")
    event_type = _require_str(envelope, "type")
    event_id = _require_str(envelope, "event_id")
    created_at = envelope.get("created_at")
    if created_at is not None and not isinstance(created_at, str):
        raise InvalidEnvelope("'created_at' must be a string")
    data = envelope.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidEnvelope("'data' must be an object")
    data = data or {}
    customer_id: str | None = None
    version: int | None = None
    event_context: dict[str, Any] | None = None
    if event_type.startswith("customer.") and "custom_attribute" not in event_type:
        raw_id = data.get("id")
        if type(raw_id) is not str or not raw_id or raw_id.isspace() or len(raw_id) > 192:
            raise InvalidEnvelope("missing or invalid 'data.id' (the customer ID)")
        customer_id = raw_id
        obj = data.get("object")
        if isinstance(obj, dict):
            customer = obj.get("customer")
            if isinstance(customer, dict):
                raw_version = customer.get("version")
                if isinstance(raw_version, int) and not isinstance(raw_version, bool):
                    version = raw_version
            context = obj.get("event_context")
            if isinstance(context, dict):
                merge = context.get("merge")
                if isinstance(merge, dict):
                    event_context = {
                        "merge": {
                            "from_customer_ids": [
                                str(x) for x in merge.get("from_customer_ids") or [] if isinstance(x, str)
                            ],
                            "to_customer_id": merge.get("to_customer_id"),
                        }
                    }
    elif event_type in CUSTOM_ATTRIBUTE_EVENT_TYPES or event_type in CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES:
        return _custom_attribute_job(data, merchant_id, event_type, event_id, created_at, received_at, source)
    # A plain dict literal with exactly EventJob's fields (dataclasses.asdict deep-copies: slow on the hot path).
    return {
        "v": JOB_PAYLOAD_VERSION,
        "merchant_id": merchant_id,
        "type": event_type,
        "event_id": event_id,
        "created_at": created_at,
        "customer_id": customer_id,
        "version": version,
        "deleted": data.get("deleted") is True,
        "event_context": event_context,
        "received_at": received_at,
        "source": source,
    }


_VALUE_FIELDS = ("key", "value", "version", "visibility", "created_at", "updated_at")
_DEFINITION_FIELDS = ("key", "name", "description", "schema", "visibility", "version", "created_at", "updated_at")
_CUSTOMER_MARK = ":CUSTOMER:"


def _custom_attribute_job(data: dict[str, Any], merchant_id: str, event_type: str,
                          event_id: str, created_at: str | None, received_at: str | None,
                          source: str) -> dict[str, Any]:
    """A custom-attribute or definition event's payload. Square's examples put the object directly in
    ``data.object``; its schema wraps it (``{"custom_attribute": ...}``): both are read. A value event names its
    customer only in ``data.id`` (``{qualified key}:CUSTOMER:{customer_id}``; keys may hold ``:``, so the ID is
    read from the right)."""
    definition = event_type in CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES
    wrapper = "custom_attribute_definition" if definition else "custom_attribute"
    raw = data.get("object")
    inner = raw.get(wrapper, raw) if isinstance(raw, dict) else None
    obj: dict[str, Any] | None = None
    if isinstance(inner, dict):
        fields = _DEFINITION_FIELDS if definition else _VALUE_FIELDS
        obj = {f: inner[f] for f in fields if f in inner}
    raw_id = data.get("id")
    customer_id: str | None = None
    if not definition:
        if not isinstance(raw_id, str) or _CUSTOMER_MARK not in raw_id or len(raw_id) > 512:
            raise InvalidEnvelope("missing or invalid 'data.id' (the {key}:CUSTOMER:{customer_id} of the value)")
        qualified, customer_id = raw_id.rsplit(_CUSTOMER_MARK, 1)
        if not customer_id or len(customer_id) > 192:
            raise InvalidEnvelope("missing or invalid customer ID in 'data.id'")
        if obj is not None and not isinstance(obj.get("key"), str):
            obj["key"] = qualified
    elif obj is not None and not isinstance(obj.get("key"), str) and isinstance(raw_id, str) and raw_id:
        obj["key"] = raw_id
    if obj is not None and not (isinstance(obj.get("key"), str) and obj["key"]):
        obj = None
    version = obj.get("version") if obj is not None else None
    return {
        "v": JOB_PAYLOAD_VERSION,
        "merchant_id": merchant_id,
        "type": event_type,
        "event_id": event_id,
        "created_at": created_at,
        "customer_id": customer_id,
        "version": version if isinstance(version, int) and not isinstance(version, bool) else None,
        "deleted": data.get("deleted") is True or event_type.endswith(".deleted"),
        "event_context": None,
        "received_at": received_at,
        "source": source,
        "object": obj,
    }


def inbox_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as the inbox keeps it: without a custom-attribute event's object, which may be personal data.
    A job rebuilt from it (redrive) reads the value from Square instead."""
    if payload.get("object") is None:
        return payload
    return {k: v for k, v in payload.items() if k != "object"}


def read_event_job(payload: Mapping[str, Any]) -> EventJob:
    """Read a payload built by :func:`build_event_job`; refuses versions this worker does not know."""
    if payload.get("v") != JOB_PAYLOAD_VERSION:
        raise InvalidEnvelope(f"unsupported job payload version {payload.get('v')!r}")
    try:
        return EventJob(
            merchant_id=str(payload["merchant_id"]),
            type=str(payload["type"]),
            event_id=str(payload["event_id"]),
            created_at=payload.get("created_at"),
            customer_id=payload.get("customer_id"),
            version=payload.get("version"),
            deleted=bool(payload.get("deleted")),
            event_context=payload.get("event_context"),
            received_at=payload.get("received_at"),
            source=str(payload.get("source") or "webhook"),
            object=payload.get("object") if isinstance(payload.get("object"), dict) else None,
        )
    except KeyError as exc:
        raise InvalidEnvelope(f"job payload lacks {exc.args[0]!r}") from None
