"""Timestamps in Square's formats and Square-looking IDs, drawn from a seeded RNG for determinism."""

from __future__ import annotations

import base64
import random
import time
import uuid
from datetime import UTC, datetime

_ALNUM = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford-style alphabet, as in Square's customer IDs
_B32_TO_ID = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALNUM.encode())


# Seconds added to the wall clock by the admin call POST /_emulator/clock/advance (process-wide: the CLI runs one
# emulator per process). Tests in one process use ManualClock (emulator.testing) instead.
_offset = 0.0


def now() -> float:
    return time.time() + _offset


def advance(seconds: float) -> None:
    """Move the emulator's clock forward: a ManualClock installed as ``now`` moves, else the wall-clock offset."""
    global _offset
    mover = getattr(now, "advance", None)
    if callable(mover):
        mover(seconds)
    else:
        _offset += seconds


def rfc3339_ms(ts: float) -> str:
    """``2022-11-09T21:23:25.519Z``: the shape of Customer.created_at in Square's responses."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rfc3339_s(ts: float) -> str:
    """``2022-11-09T21:23:25Z``: the shape of Customer.updated_at and event created_at in Square's examples."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ns(ts: float) -> str:
    """``2020-08-14T15:51:04.246373287Z``: the nanosecond shape of oauth.authorization.revoked timestamps."""
    whole = int(ts)
    nanos = min(int((ts - whole) * 1e9), 999_999_999)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos:09d}Z"


def go_time(ts: float) -> str:
    """``2022-01-10 23:29:48 +0000 UTC``: the Go-style timestamps of the webhook subscription examples."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


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
