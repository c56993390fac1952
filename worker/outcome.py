"""What became of one event, or of one customer brought in line by ID. One vocabulary for both.

The inbox records it (``square.webhook_events.outcome``, whose CHECK constraint in schema.sql lists exactly
these values: tests/test_architecture.py compares them) and the worker counts it in its events metric.
:func:`worker.sync.sync_customers` answers with the first four for each requested ID.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    APPLIED = "applied"  # a snapshot was written
    STALE = "stale"  # the mirror already held this or newer
    DELETED = "deleted"  # tombstoned
    MERGED = "merged"  # merged away into another profile (lineage recorded)
    DUPLICATE = "duplicate"  # the event was already processed
    IGNORED = "ignored"  # not a customer event
    FAILED = "failed"  # given up: redrive re-enqueues it
    UNAUTHORIZED = "unauthorized"  # waiting for a working token (not finished)
