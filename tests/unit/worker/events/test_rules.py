from __future__ import annotations

import pytest

from square_mirror.jobs import EventJob, read_event_job
from tests.factories import event_job
from worker.events.rules import event_is_stale, target_is_synced
from worker.store import StoredCustomer


def _job(event_type: str, version: int | None) -> EventJob:
    return read_event_job(event_job(event_type=event_type, customer_id="C", version=version))


LIVE_5 = StoredCustomer(version=5, deleted=False, merged_into=None)
TOMB = StoredCustomer(version=2, deleted=True, merged_into=None)


@pytest.mark.parametrize(
    ("stored", "event_type", "version", "stale"),
    [
        (None, "customer.updated", 3, False),  # never seen: fetch
        (LIVE_5, "customer.updated", 4, True),  # older event
        (LIVE_5, "customer.updated", 5, True),  # same version: the stored row was fetched after it
        (LIVE_5, "customer.updated", 6, False),  # newer: fetch
        (LIVE_5, "customer.updated", None, False),  # no version: cannot tell
        (TOMB, "customer.created", 0, True),  # tombstones are final
        (TOMB, "customer.updated", 9, True),
        (LIVE_5, "customer.deleted", 3, False),  # a delete is never stale: it costs no API call, and ...
        (TOMB, "customer.deleted", 2, False),  # ... a tombstone written from a 404 learns Square's time of it
        (TOMB, "customer.deleted", None, False),
        (TOMB, "customer.deleted", 3, False),  # and the version Square gave the deleted profile
        (None, "customer.deleted", 3, False),
    ],
)
def test_event_gate(stored: StoredCustomer | None, event_type: str, version: int | None, stale: bool) -> None:
    assert event_is_stale(stored, _job(event_type, version)) is stale


def test_merge_target_gate() -> None:
    assert not target_is_synced(None, None)
    assert target_is_synced(LIVE_5, None)
    assert target_is_synced(TOMB, 7)
    assert not target_is_synced(LIVE_5, 6)
