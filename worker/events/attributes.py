"""Custom-attribute and definition events: the object the event carries is applied as it is, without any Square
request, guarded by its own ``version`` (``square.custom_attribute_state_wins``), in batches with concurrent events
(:mod:`worker.events.attribute_writer`).

The ``owned`` and ``visible`` events of one change carry the same object, so the second changes nothing. A
value for a customer the mirror does not know yet is kept, and that customer is fetched (the only request such
an event can cost). A job without its object (one rebuilt from the inbox by ``redrive``, which never keeps
values) reads the customer's values, or the definitions, from Square instead.
"""

from __future__ import annotations

from square_mirror.constants import CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES
from square_mirror.jobs import EventJob
from square_mirror.timefmt import parse_time, utcnow
from worker import attribute_store, attribute_sync
from worker.context import WorkerContext
from worker.events import inbox
from worker.events.attribute_writer import Change
from worker.outcome import Outcome
from worker.store import StoredCustomer

# The deprecated names of the owned events (the current ones contain ".owned.").
_DEPRECATED_OWNED = frozenset(("customer.custom_attribute.updated", "customer.custom_attribute.deleted",
                               "customer.custom_attribute_definition.created",
                               "customer.custom_attribute_definition.updated",
                               "customer.custom_attribute_definition.deleted"))


def is_definition_event(job: EventJob) -> bool:
    return job.type in CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES


def change_of(job: EventJob, own_application_id: str | None) -> Change | None:
    """The write an event asks for (None without its object). An owned event's qualifier is this application's own
    ID, which its REST reads never show; other qualified keys are settled by the application's ID or, without it,
    by the definitions the mirror holds (``attribute_store.resolve_key``)."""
    key = job.custom_attribute_key
    if key is None or job.object is None:
        return None
    final = True
    if (".owned." in job.type or job.type in _DEPRECATED_OWNED) and ":" in key and not key.startswith("square:"):
        key = key.rsplit(":", 1)[1]
    elif own_application_id or ":" not in key or key.startswith("square:"):
        key = attribute_store.canonical_key(key, own_application_id)
    else:
        final = False
    deleted_at = (parse_time(job.created_at) or utcnow()) if job.deleted else None
    if is_definition_event(job):
        row = attribute_store.definition_row(job.object, key=key, deleted_at=deleted_at)
    else:
        assert job.customer_id is not None  # every value event names its customer (square_mirror.jobs)
        row = attribute_store.value_row(job.customer_id, job.object, key=key, deleted_at=deleted_at)
    return Change(job.merchant_id, row, final)


async def apply(wc: WorkerContext, job: EventJob, stored: StoredCustomer | None) -> Outcome:
    """Apply one custom-attribute or definition event (batched with concurrent ones, :mod:`attribute_writer`);
    ``stored`` is the value's customer as the mirror holds it (None: unknown)."""
    change = change_of(job, wc.settings.square_application_id)
    if change is None:
        return await _read_instead(wc, job)
    if stored is not None and stored.deleted and not change.definition:
        # A gone customer has no values (its tombstone ended them): a late event of one brings nothing back.
        await wc.inbox.finish(job, Outcome.STALE)
        return Outcome.STALE
    written = await wc.attributes.write((job.merchant_id, job.event_id), change)
    outcome = (Outcome.DELETED if job.deleted else Outcome.APPLIED) if written else Outcome.STALE
    if stored is None and not change.definition:
        assert job.customer_id is not None
        await wc.coalescer.fetch(job.merchant_id, job.customer_id, None)
    await wc.inbox.finish(job, outcome)
    return outcome


async def _read_instead(wc: WorkerContext, job: EventJob) -> Outcome:
    sync = wc.sync
    if is_definition_event(job):
        await attribute_sync.sync_definitions(sync, job.merchant_id)
    elif job.customer_id is not None:
        await attribute_sync.sync_values(sync, job.merchant_id, [job.customer_id], concurrency=1)
    else:
        outcome = Outcome.IGNORED
        await inbox.finish(wc.pool, job.merchant_id, job.event_id, outcome)
        return outcome
    await inbox.finish(wc.pool, job.merchant_id, job.event_id, Outcome.APPLIED)
    return Outcome.APPLIED
