"""The event gate: may an event be answered from the mirror alone, without asking Square?

This is the pre-fetch half of the staleness rule. The write half (may a fetched snapshot replace the stored
row?) is ``square.customer_snapshot_wins`` in schema.sql, used by the upsert guard; nothing else decides either.
"""

from __future__ import annotations

from square_mirror.jobs import EventJob
from worker.store import StoredCustomer


def event_is_stale(stored: StoredCustomer | None, job: EventJob) -> bool:
    """True when the mirror already reflects this event, so it needs no API call and no write.

    - A ``customer.deleted`` is never stale here: it costs no API call, and whether it changes anything is
      decided by the tombstone write (``worker/sql/tombstone_customers.sql``), in the same transaction as the
      outcome. A tombstone the mirror wrote from what it observed (a 404 or a redirect) knew neither the time
      Square gives the delete nor the version of the deleted profile; the event brings both, so every delivery
      order ends with the same tombstone. Deciding it here, from the version alone, skipped the event whenever
      the tombstone already held that version (a profile deleted at version 0, or the mirror had fetched its
      last version before the 404) and left the observed time in the row.
    - A tombstone is otherwise final: nothing an event says can bring a deleted or merged-away customer back.
    - Otherwise the event is stale when the mirror holds the customer at a version >= the event's: that row
      was fetched after the event's change was committed. An event without a version is never stale.
    """
    if job.type == "customer.deleted" or stored is None:
        return False
    if stored.deleted:
        return True
    return job.version is not None and stored.version >= job.version


def target_is_synced(stored: StoredCustomer | None, version: int | None) -> bool:
    """For a merge target named only by ``event_context`` (its version unknown): any stored row will do.

    The target was created by the merge, so any snapshot the mirror holds was fetched after the merge; later
    changes to it arrive as events of their own.
    """
    if stored is None:
        return False
    return stored.deleted or version is None or stored.version >= version
