"""Every public request counted per seller, on the emulator's side of the wire (admin ``/_emulator/requests``).

Why here and not in the mirror: a benchmark that asks "did any seller go over its request budget?" must not take
the client's word for it. The mirror counts what it meant to send; the emulator counts what arrived, whoever sent
it, and which answers were 429s. The count is one dict increment per request, so it is always on.

Keys: the seller a /v2 request authenticated as (its merchant ID), ``<application>`` for the application token,
``<unauthenticated>`` for a request that failed authentication (no seller to charge it to), and ``<oauth2>`` for
the OAuth API (``/oauth2/...``), whose handlers authenticate on their own and which Square does not rate-limit per
seller.

Per key: ``total`` requests, how many were answered ``429`` (the per-seller token bucket, or the random
``error_429_rate`` fault when that knob is set), ``by_operation`` (Square's operation ID, ``<unmatched>`` for a path
no route serves), and ``max_per_second``: the most requests in one whole wall-clock second (``max_second``, Unix
time, says which). Only the current second is kept per key, so memory stays bounded however long the run; a peak
over whole seconds is not the token bucket's sliding window, which allows ``rate_limit_burst`` at once and
``rate_limit_rps`` after that: compare ``429`` for the budget, ``max_per_second`` for the shape.
"""

from __future__ import annotations

import time
from typing import Any

from . import clock

APPLICATION = "<application>"
UNAUTHENTICATED = "<unauthenticated>"
OAUTH2 = "<oauth2>"
UNMATCHED = "<unmatched>"


class KeyCounts:
    """One seller's (or one special key's) counts since the last reset."""

    __slots__ = ("by_operation", "max_per_second", "max_second", "rate_limited", "second", "second_count", "total")

    def __init__(self) -> None:
        self.total = 0
        self.rate_limited = 0
        self.by_operation: dict[str, int] = {}
        self.second = 0
        self.second_count = 0
        self.max_per_second = 0
        self.max_second = 0

    def add(self, operation: str, status: int, second: int) -> None:
        self.total += 1
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1
        if status == 429:
            self.rate_limited += 1
        if second != self.second:
            self.second, self.second_count = second, 0
        self.second_count += 1
        if self.second_count > self.max_per_second:
            self.max_per_second, self.max_second = self.second_count, second

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "429": self.rate_limited, "max_per_second": self.max_per_second,
                "max_second": self.max_second or None, "by_operation": dict(sorted(self.by_operation.items()))}


class RequestCounts:
    """Counts per key since the emulator started or since ``reset`` (admin ``DELETE /_emulator/requests``)."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyCounts] = {}
        self.since = time.time()
        self.since_monotonic = time.monotonic()

    def add(self, key: str, operation: str, status: int) -> None:
        counts = self.keys.get(key)
        if counts is None:
            counts = self.keys[key] = KeyCounts()
        # Wall-clock seconds (not the emulator's clock, which tests move at will): what a seller's budget is about.
        counts.add(operation, status, int(time.time()))

    def reset(self) -> None:
        self.keys.clear()
        self.since = time.time()
        self.since_monotonic = time.monotonic()

    def to_json(self) -> dict[str, Any]:
        return {"since": clock.rfc3339_ms(self.since), "seconds": round(time.monotonic() - self.since_monotonic, 3),
                "merchants": {key: counts.to_json() for key, counts in sorted(self.keys.items())}}
