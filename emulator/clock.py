"""Timestamps in Square's formats and Square-looking IDs, drawn from a seeded RNG for determinism."""

from __future__ import annotations

import base64
import random
import time
import uuid
from datetime import UTC, datetime

_ALNUM = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford-style alphabet, as in Square's customer IDs
_B32_TO_ID = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALNUM.encode())


def now() -> float:
    return time.time()


def rfc3339_ms(ts: float) -> str:
    """``2022-11-09T21:23:25.519Z``: the shape of Customer.created_at in Square's responses."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rfc3339_s(ts: float) -> str:
    """``2022-11-09T21:23:25Z``: the shape of Customer.updated_at and event created_at in Square's examples."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    """Parse an RFC 3339 timestamp (``Z`` or offset, optional fraction) to epoch seconds."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def new_id(rng: random.Random, length: int = 26) -> str:
    """``length`` (<= 26) characters of the ID alphabet from one RNG draw (fast enough for 200k seeds)."""
    raw = rng.getrandbits(136).to_bytes(17, "big")
    return base64.b32encode(raw)[:length].translate(_B32_TO_ID).decode()


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
