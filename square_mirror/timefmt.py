"""Time: now, and the timestamp formats the project reads and writes. The one place they are defined.

- :func:`rfc3339`: what the project sends Square and keeps in run checkpoints (UTC, milliseconds, ``Z``).
- :func:`rfc3339_ms`: the same from epoch milliseconds (backfill partitions); :func:`epoch_ms` the way back.
- :func:`iso`: full precision, ``+00:00`` (``listing_started_at`` in checkpoints: microseconds matter there,
  the inference compares it with ``observed_at``).
- :func:`parse_time`: any RFC 3339 timestamp Square sends (any number of fraction digits, ``Z`` or an offset),
  or None; :func:`require_time` when a value must be there.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Final

_FRACTION_RE: Final = re.compile(r"(\.\d{6})\d+")


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_ms(ms: int) -> str:
    return rfc3339(datetime.fromtimestamp(ms / 1000, UTC))


def from_epoch(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def epoch_ms(value: str) -> int:
    """An ISO 8601 timestamp in epoch milliseconds (floor)."""
    return math.floor(datetime.fromisoformat(value).timestamp() * 1000)


def is_timestamp(value: object) -> bool:
    """Is ``value`` an ISO 8601 timestamp as Python reads it (what a Square answer's times are checked by)?"""
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp (any number of fraction digits, ``Z`` or an offset; naive means UTC), else None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION_RE.sub(r"\1", value.strip()).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def require_time(value: str | None) -> datetime:
    """:func:`parse_time` for a value that must be a timestamp (one the project wrote itself)."""
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError(f"not a timestamp: {value!r}")
    return parsed
