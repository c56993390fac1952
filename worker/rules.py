"""The event gate: may an event be answered from the mirror alone, without asking Square?

This is the pre-fetch half of the staleness rule. The write half (may a fetched snapshot replace the stored
row?) is ``square.customer_snapshot_wins`` in schema.sql, used by the upsert guard; nothing else decides either.
"""

from __future__ import annotations

from square_mirror.jobs import EventJob
from worker.store import StoredCustomer


def event_is_stale(stored: StoredCustomer | None, job: EventJob) -> bool:
    """True when the mirror already reflects this event, so it needs no API call and no write.

    - A tombstone is final: nothing an event says can bring a deleted or merged-away customer back. Only a
      ``customer.deleted`` stating a higher version than the tombstone holds is news: the version Square gave
      the profile it deleted (a tombstone written from a 404 knew none), so every delivery order ends with the
      same tombstone.
    - A ``customer.deleted`` is otherwise never stale (the delete itself is the news).
    - Otherwise the event is stale when the mirror holds the customer at a version >= the event's: that row
      was fetched after the event's change was committed. An event without a version is never stale.
    """
    if stored is None:
        return False
    if stored.deleted:
        return not (job.type == "customer.deleted" and job.version is not None and job.version > stored.version)
    if job.type == "customer.deleted":
        return False
    return job.version is not None and stored.version >= job.version


def target_is_synced(stored: StoredCustomer | None, version: int | None) -> bool:
    """For a merge target named only by ``event_context`` (its version unknown): any stored row will do.

    The target was created by the merge, so any snapshot the mirror holds was fetched after the merge; later
    changes to it arrive as events of their own.
    """
    if stored is None:
        return False
    return stored.deleted or version is None or stored.version >= version
