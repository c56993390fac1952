"""Request validation with Square's documented rules and error codes.

Kept separate from state so the rules (what is recognised, how long a field may be, what a valid
phone/email/birthday is) can be read against the seeds in one place.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .errors import SquareError, bad_request, error, limit_error, unrecognized_field

STRING_FIELDS = ("given_name", "family_name", "company_name", "nickname", "email_address", "phone_number",
                 "reference_id", "note", "birthday")
CUSTOMER_INPUT_FIELDS = frozenset((*STRING_FIELDS, "address", "tax_ids"))
CREATE_FIELDS = CUSTOMER_INPUT_FIELDS | {"idempotency_key"}
UPDATE_FIELDS = CUSTOMER_INPUT_FIELDS | {"version"}
PUBLIC_FIELDS = ("given_name", "family_name", "company_name", "email_address", "phone_number")

MAX_LENGTH = {
    "given_name": 300, "family_name": 300, "company_name": 500, "nickname": 100, "reference_id": 100,
    "email_address": 254,
}
ADDRESS_FIELDS = {
    "address_line_1": 500, "address_line_2": 500, "address_line_3": 500, "locality": 300, "sublocality": 200,
    "sublocality_2": 200, "sublocality_3": 200, "administrative_district_level_1": 200,
    "administrative_district_level_2": 200, "administrative_district_level_3": 200, "postal_code": 12,
    "country": 2, "first_name": 300, "last_name": 300,
}
# Address.first_name/last_name are accepted but ignored on create/update (FACTS §2).
IGNORED_ADDRESS_FIELDS = frozenset(("first_name", "last_name"))

_EMAIL = re.compile(r"^[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                    r"\.[A-Za-z]{2,}$")
EMAIL_PATTERN = _EMAIL
_PHONE_CHARS = re.compile(r"^\+?[0-9 ()\-.]+$")
_BIRTHDAY = re.compile(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$")
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_json(raw: bytes) -> Any:
    """Parse a request body; malformed JSON is Square's 400 BAD_REQUEST."""
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Invalid JSON: {exc}") from None


def _position(raw: bytes, name: str) -> tuple[int, int]:
    """1-based line and character of the offending key in the raw body (UNCONFIRMED column rule)."""
    text = raw.decode("utf-8", "replace")
    idx = text.find(f'"{name}"')
    if idx < 0:
        return 1, 1
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


def reject_unknown(obj: Any, allowed: frozenset[str] | set[str], raw: bytes) -> None:
    """Square 2022-03-16+: any unrecognised field is 400 BAD_REQUEST naming it."""
    if not isinstance(obj, dict):
        raise bad_request("Expected a JSON object.")
    for key in obj:
        if key not in allowed:
            line, col = _position(raw, key)
            raise unrecognized_field(key, line, col)


def valid_phone(value: str) -> bool:
    if not _PHONE_CHARS.match(value):
        return False
    digits = sum(c.isdigit() for c in value)
    return 9 <= digits <= 16


def e164(value: str) -> str | None:
    """Normalise a stored or queried phone number to E.164 (US numbers without country code get +1)."""
    digits = "".join(c for c in value if c.isdigit())
    if value.strip().startswith("+"):
        return "+" + digits if 8 <= len(digits) <= 15 else None
    if len(digits) == 10:
        return "+1" + digits
    if len(digits) == 11 and digits.startswith("1"):
        return "+" + digits
    return None


def normalise_birthday(value: str) -> str | None:
    """``YYYY-MM-DD`` or ``MM-DD`` in, ``YYYY-MM-DD`` (``0000`` for no year) out; None if invalid."""
    m = _BIRTHDAY.match(value)
    if not m:
        return None
    year, month, day = m.group(1) or "0000", int(m.group(2)), int(m.group(3))
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS[month - 1]:
        return None
    y = int(year)
    if month == 2 and day == 29 and y != 0 and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        return None
    return f"{year}-{month:02d}-{day:02d}"


def _check_string(name: str, value: Any, errs: list[dict[str, Any]], label: str | None = None) -> None:
    label = label or name
    if not isinstance(value, str):
        errs.append(error("INVALID_VALUE", f"Expected a string value for `{label}`.", field=label))
        return
    limit = MAX_LENGTH.get(name)
    if limit is not None and len(value) > limit:
        errs.append(error("VALUE_TOO_LONG", f"Field must not be greater than {limit} length", field=label))


def validate_customer_fields(body: dict[str, Any], raw: bytes, *, seller_country: str = "US") -> dict[str, Any]:
    """Validate the customer fields of a create/update body and return them normalised.

    Nulls and empty strings are passed through (they mean "clear" on update); everything else is checked
    and all errors are reported together, phone number errors included (2022-10-19 behaviour).
    """
    errs: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for name in STRING_FIELDS:
        if name not in body:
            continue
        value = body[name]
        out[name] = value
        if value is None or value == "":
            continue
        _check_string(name, value, errs)
        if not isinstance(value, str) or (errs and errs[-1].get("field") == name):
            continue
        if name == "email_address" and not _EMAIL.match(value):
            errs.append(error("INVALID_EMAIL_ADDRESS", "Expected email_address to be a valid email address",
                              field="email_address"))
        elif name == "phone_number" and not valid_phone(value):
            errs.append(error("INVALID_PHONE_NUMBER", "Expected phone_number to be a valid phone number",
                              field="phone_number"))
        elif name == "birthday":
            norm = normalise_birthday(value)
            if norm is None:
                errs.append(error("INVALID_TIME", "Expected birthday to be in YYYY-MM-DD or MM-DD format",
                                  field="birthday"))
            else:
                out[name] = norm
    if "address" in body:
        address = body["address"]
        if address is None:
            out["address"] = None
        elif not isinstance(address, dict):
            errs.append(error("INVALID_VALUE", "Expected an object for `address`.", field="address"))
        else:
            reject_unknown(address, frozenset(ADDRESS_FIELDS), raw)
            clean: dict[str, Any] = {}
            for key, value in address.items():
                if key in IGNORED_ADDRESS_FIELDS:
                    continue
                if value is not None and value != "":
                    label = f"address.{key}"
                    if not isinstance(value, str):
                        errs.append(error("INVALID_VALUE", f"Expected a string value for `{label}`.", field=label))
                    elif len(value) > ADDRESS_FIELDS[key]:
                        errs.append(error("VALUE_TOO_LONG",
                                          f"Field must not be greater than {ADDRESS_FIELDS[key]} length",
                                          field=label))
                    elif key == "country" and not re.fullmatch(r"[A-Z]{2}", value):
                        errs.append(error("INVALID_ENUM_VALUE", f"`{value}` is not a valid enum value for "
                                          "`address.country`.", field=label))
                clean[key] = value
            out["address"] = clean
    if "tax_ids" in body and body["tax_ids"] is not None:
        if seller_country not in ("FR", "IE", "ES", "GB"):
            errs.append(error("BAD_REQUEST", "`tax_ids` is not supported for sellers in this country.",
                              field="tax_ids"))
        else:
            out["tax_ids"] = body["tax_ids"]
    elif "tax_ids" in body:
        out["tax_ids"] = None
    if errs:
        raise SquareError(400, errs)
    return out


def has_identity(fields: dict[str, Any]) -> bool:
    return any(isinstance(fields.get(name), str) and fields[name] for name in PUBLIC_FIELDS)


def parse_limit(value: Any, *, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise bad_request("`limit` must be an integer.", field="limit", code="INVALID_VALUE") from None
    if n < low or n > high:
        raise limit_error(n, low, high)
    return n
