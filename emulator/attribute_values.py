"""A custom attribute value (``AttrValue``, one committed version, immutable) and the data types its definition's
``schema`` names (FACTS-2 A.2): the ``$ref`` URLs, the Selection schema, and checking a value against them."""

from __future__ import annotations

import re
from typing import Any

from . import clock, validation
from .errors import SquareError, error
from .validation import normalise_birthday

COMMON = "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common."
TYPES = ("String", "Email", "PhoneNumber", "Number", "Boolean", "Date", "Address", "Selection")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class AttrValue:
    """One committed version of a custom attribute value on one profile (its key lives in the maps holding it)."""

    __slots__ = ("created_at", "updated_at", "updated_ts", "value", "version")

    def __init__(self, value: Any, version: int, created_at: str, updated_at: str, updated_ts: float) -> None:
        self.value = value
        self.version = version
        self.created_at = created_at
        self.updated_at = updated_at
        self.updated_ts = updated_ts  # parse_rfc3339(updated_at): what the search filter's updated_at compares

    def render(self, key: str, visibility: str) -> dict[str, Any]:
        """The ``CustomAttribute`` object, in the field order of Square's examples."""
        return {"key": key, "value": self.value, "version": self.version, "visibility": visibility,
                "updated_at": self.updated_at, "created_at": self.created_at}

    def to_json(self) -> list[Any]:
        return [self.value, self.version, self.created_at, self.updated_at]

    @classmethod
    def from_json(cls, item: list[Any]) -> AttrValue:
        return cls(item[0], int(item[1]), item[2], item[3], clock.parse_rfc3339(item[3]))


def stamp(ts: float) -> tuple[str, float]:
    """A value's ``updated_at`` (RFC 3339, milliseconds) and the epoch seconds that string stands for."""
    text = clock.rfc3339_ms(ts)
    return text, clock.parse_rfc3339(text)


def schema_for(kind: str) -> dict[str, Any]:
    """The ``schema`` of a definition of a ``$ref`` type (all but Selection)."""
    return {"$ref": COMMON + kind}


def selection_schema(options: list[str], names: list[str], max_items: int) -> dict[str, Any]:
    """Square's inline Selection schema (the shape of the spec's example); ``enum[i]`` is named ``names[i]``."""
    return {"items": {"enum": options, "names": names}, "maxItems": max_items, "type": "array", "uniqueItems": True}


def schema_type(definition: dict[str, Any]) -> str:
    schema = definition.get("schema") or {}
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return "Selection"
    ref = str(schema.get("$ref", ""))
    return ref.rsplit(".", 1)[-1] if "#" in ref else ""


def _selection_ok(schema: dict[str, Any], value: Any) -> bool:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        return False
    options = (schema.get("items") or {}).get("enum")
    if isinstance(options, list) and any(v not in options for v in value):
        return False
    most = schema.get("maxItems")
    return not isinstance(most, int) or len(value) <= most


def _type_ok(kind: str, definition: dict[str, Any], value: Any) -> bool:
    if kind in ("String", ""):
        return kind == "" or (isinstance(value, str) and len(value) <= 2000)
    if kind == "Email":
        return isinstance(value, str) and bool(validation.EMAIL_PATTERN.match(value))
    if kind == "PhoneNumber":
        return isinstance(value, str) and validation.valid_phone(value)
    if kind == "Number":  # UNCONFIRMED: Square's example is a string ("10.5"); numbers are accepted too
        text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        return isinstance(text, str) and bool(_NUMBER.match(text))
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind == "Date":
        return isinstance(value, str) and len(value) == 10 and normalise_birthday(value) == value
    if kind == "Selection":
        return _selection_ok(definition.get("schema") or {}, value)
    if kind == "Address":
        return isinstance(value, dict)
    return True  # a $ref type the emulator does not know: anything goes


def check_value(definition: dict[str, Any], key: str, value: Any) -> None:
    """Validate a value against its definition's schema type; 400 ``INVALID_VALUE`` otherwise."""
    kind = schema_type(definition)
    if not _type_ok(kind, definition, value):
        raise SquareError(400, [error("INVALID_VALUE", f"Invalid value for custom attribute `{key}` "
                                      f"of type {kind or 'unknown'}.", field="custom_attribute.value")])
