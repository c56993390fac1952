"""PII and secret redaction: the one rule that keeps customer data and credentials out of every log line.

Keys that name PII or secrets are masked at any depth; string values are scrubbed of e-mail addresses, bearer
tokens, passwords in URLs and the configured secret values (:func:`register_secrets`). :func:`redact_processor`
is the structlog processor that applies it to every line (see square_mirror/logs.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final

REDACTED: Final = "[REDACTED]"

PII_KEYS: Final = frozenset(
    {
        "given_name", "family_name", "nickname", "company_name", "email_address", "email", "phone_number",
        "phone", "address", "address_line_1", "address_line_2", "address_line_3", "locality", "sublocality",
        "postal_code", "first_name", "last_name", "note", "birthday", "tax_ids", "eu_vat", "name_on_card",
        # Custom attribute values may be any of the above or free text: a value, and anything that carries one.
        "value", "values", "custom_attribute", "custom_attributes", "object",
    }
)
SECRET_KEYS: Final = frozenset(
    {
        "token", "access_token", "authorization", "signature_key", "signature_keys", "password", "secret",
        "x-square-hmacsha256-signature", "signature", "database_url", "redis_url", "dsn", "cookie",
    }
)
_EMAIL_RE: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_BEARER_RE: Final = re.compile(r"(?i)bearer\s+[\w.~+/=-]+")
_URL_PASSWORD_RE: Final = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")

_secret_values: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Secret values (tokens, signature keys, URLs with passwords) scrubbed from any logged string.

    Called by configure_logging, after it wrote the log_line lines still waiting to be rendered.
    """
    global _secret_values
    _secret_values = tuple(sorted({v for v in values if len(v) >= 6}, key=len, reverse=True))


def scrub_text(text: str) -> str:
    """``text`` without the registered secret values, e-mail addresses, bearer tokens and URL passwords."""
    # Cheap substring tests first: nearly every logged string has no "@" and no "bearer", and the regexes
    # would otherwise dominate the cost of a log line on the receiver's hot path.
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text:
        if "://" in text:
            text = _URL_PASSWORD_RE.sub(r"\g<scheme>\g<user>:" + REDACTED + "@", text)
        text = _EMAIL_RE.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER_RE.sub("Bearer " + REDACTED, text)
    return text


_MASKED_KEYS: Final = PII_KEYS | SECRET_KEYS
_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None)})


def _is_masked_key(key: str) -> bool:
    """Whether a key names PII or a secret."""
    return key.lower() in _MASKED_KEYS


def redact(value: Any, *, depth: int = 0) -> Any:
    """Mask PII and secrets in any JSON-like value, nested containers included."""
    if depth > 20:
        return REDACTED
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_masked_key(name):
                out[name] = REDACTED if item is not None else None
            else:
                out[name] = redact(item, depth=depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, depth=depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return value


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The structlog processor: every field of a line redacted (a masked key's value is masked even if None).

    A line's fields are mostly strings, numbers and None, so those are handled here rather than through
    :func:`redact`'s general walk: the redactor runs for every line the receiver writes.
    """
    for key, value in event_dict.items():  # replacing values while iterating is safe: no key is added or removed
        kind = type(value)
        if _is_masked_key(key):
            event_dict[key] = REDACTED
        elif kind is str:
            event_dict[key] = scrub_text(value)
        elif kind in _PLAIN_TYPES:
            continue
        elif key == "exception":
            event_dict[key] = scrub_text(str(value))
        else:
            event_dict[key] = redact(value)
    return event_dict
