"""The one door between the receiver and the worker: the event job payload, and the connect job payload.

The receiver builds them with :func:`build_event_job` and :func:`build_connect_job`; the worker reads them with
:func:`read_event_job` and :func:`read_connect_job`. Neither side imports the other's code. A customer event's
payload is small and free of customer PII (names, emails, phones, addresses): the worker re-fetches the profile
from Square anyway. A custom-attribute event's payload carries the changed value or definition (``object``), so
that it is applied without any Square request; that value may be personal data, so it lives in Redis only until
its job finishes (jobs keep no result) and is never written to the inbox (:func:`inbox_payload`) or a log.

An ``oauth.authorization.revoked`` event's payload carries ``object = {"revoked_at", "revoker_type"}`` (Square's
``data.object.revocation``; ``data.id`` is "not applicable" and never read). No secret is in it.

The connect job carries the OAuth redirect's authorization code and state. Both are secrets while they live (the
code for five minutes and one use, the state's MAC for an hour), so the payload holds them sealed with the first
encryption key (Fernet): Redis, its dumps and anything that prints a job's arguments see ciphertext only, and the
worker opens them with the same keys (:func:`read_connect_job`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from square_mirror.constants import (
    CONNECT_JOB_PAYLOAD_VERSION,
    CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES,
    CUSTOM_ATTRIBUTE_EVENT_TYPES,
    JOB_PAYLOAD_VERSION,
    OAUTH_REVOKED_EVENT,
)
from square_mirror.credentials.cipher import CipherUnavailable, TokenCipher
from square_mirror.settings import Secret


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
    def revocation(self) -> tuple[str | None, str | None]:
        """(revoked_at, revoker_type) of an ``oauth.authorization.revoked`` event, each None when Square omits it."""
        obj = self.object or {}
        revoked_at, revoker = obj.get("revoked_at"), obj.get("revoker_type")
        return (revoked_at if isinstance(revoked_at, str) else None, revoker if isinstance(revoker, str) else None)

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
    elif event_type == OAUTH_REVOKED_EVENT:
        return _revocation_job(data, merchant_id, event_id, created_at, received_at, source)
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


def _revocation_job(data: dict[str, Any], merchant_id: str, event_id: str, created_at: str | None,
                    received_at: str | None, source: str) -> dict[str, Any]:
    """An ``oauth.authorization.revoked`` event: who revoked and when (bounded strings; either may be missing)."""
    raw = data.get("object")
    revocation = raw.get("revocation") if isinstance(raw, dict) else None
    obj: dict[str, Any] = {}
    if isinstance(revocation, dict):
        for field in ("revoked_at", "revoker_type"):
            value = revocation.get(field)
            if isinstance(value, str) and 0 < len(value) <= 64:
                obj[field] = value
    return {
        "v": JOB_PAYLOAD_VERSION,
        "merchant_id": merchant_id,
        "type": OAUTH_REVOKED_EVENT,
        "event_id": event_id,
        "created_at": created_at,
        "customer_id": None,
        "version": None,
        "deleted": False,
        "event_context": None,
        "received_at": received_at,
        "source": source,
        "object": obj,
    }


def inbox_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as the inbox keeps it: without a custom-attribute event's object, which may be personal data.
    A job rebuilt from it (redrive) reads the value from Square instead. A revocation's object (who, when) stays."""
    if payload.get("object") is None or payload.get("type") == OAUTH_REVOKED_EVENT:
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


# -- the connect job: the OAuth redirect's code and state, sealed ------------------------------------------------

MAX_CODE_CHARS = 512  # Square documents codes of at most 191 characters


@dataclass(frozen=True, repr=False)
class ConnectJob:
    """An opened connect payload: the code and the state stay Secrets, so no repr or log line shows them."""

    code: Secret
    state: Secret
    received_at: str | None = None

    def __repr__(self) -> str:
        return f"ConnectJob(received_at={self.received_at!r})"


def valid_code(code: str | None) -> bool:
    """An authorization code as Square sends it: short, printable ASCII, nothing that could break a log or a URL."""
    if not code or len(code) > MAX_CODE_CHARS:
        return False
    return code.isascii() and code.isprintable() and " " not in code


def build_connect_job(code: str, state: str, cipher: TokenCipher, *, received_at: str | None = None) -> dict[str, Any]:
    """The connect job's payload: the code and the state sealed with the first encryption key."""
    if not valid_code(code):
        raise InvalidEnvelope("invalid authorization code")
    return {
        "v": CONNECT_JOB_PAYLOAD_VERSION,
        "code": cipher.encrypt(code),
        "state": cipher.encrypt(state),
        "received_at": received_at,
    }


def read_connect_job(payload: Mapping[str, Any], cipher: TokenCipher) -> ConnectJob:
    """Open a payload built by :func:`build_connect_job` (any configured key opens it: key rotation)."""
    if payload.get("v") != CONNECT_JOB_PAYLOAD_VERSION:
        raise InvalidEnvelope(f"unsupported connect payload version {payload.get('v')!r}")
    sealed_code, sealed_state = payload.get("code"), payload.get("state")
    if not isinstance(sealed_code, str) or not isinstance(sealed_state, str):
        raise InvalidEnvelope("connect payload lacks its code or state")
    try:
        code, state = cipher.decrypt(sealed_code), cipher.decrypt(sealed_state)
    except (CipherUnavailable, UnicodeDecodeError, ValueError):
        raise InvalidEnvelope("connect payload does not open with any configured encryption key") from None
    received_at = payload.get("received_at")
    return ConnectJob(Secret(code), Secret(state), received_at if isinstance(received_at, str) else None)
