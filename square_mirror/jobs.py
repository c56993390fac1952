"""The one door between the receiver and the worker: the event job payload.

The receiver builds it with :func:`build_event_job`; the worker reads it with :func:`read_event_job`. Neither
side imports the other's code. The payload is deliberately small and free of customer PII (names, emails,
phones, addresses): the worker re-fetches the profile from Square anyway, so Redis never holds personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from square_mirror.constants import JOB_PAYLOAD_VERSION


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
        )
    except KeyError as exc:
        raise InvalidEnvelope(f"job payload lacks {exc.args[0]!r}") from None
