"""Custom-attribute and definition events: the object the event carries is applied as it is, without any Square
request, guarded by its own ``version`` (``square.custom_attribute_state_wins``).

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
from worker.outcome import Outcome
from worker.store import Conn, StoredCustomer

# The deprecated names of the owned events (the current ones contain ".owned.").
_DEPRECATED_OWNED = frozenset(("customer.custom_attribute.updated", "customer.custom_attribute.deleted",
                               "customer.custom_attribute_definition.created",
                               "customer.custom_attribute_definition.updated",
                               "customer.custom_attribute_definition.deleted"))


def is_definition_event(job: EventJob) -> bool:
    return job.type in CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES


async def event_key(conn: Conn, job: EventJob, own_application_id: str | None) -> str | None:
    """The object's key as this application's REST reads show it."""
    key = job.custom_attribute_key
    if key is None:
        return None
    owned = ".owned." in job.type or job.type in _DEPRECATED_OWNED
    # An owned event's qualifier is this application's own ID, which its REST reads never show.
    if owned and ":" in key and not key.startswith("square:"):
        return key.rsplit(":", 1)[1]
    return await attribute_store.resolve_key(conn, job.merchant_id, key, own_application_id)


async def apply(wc: WorkerContext, job: EventJob, stored: StoredCustomer | None) -> Outcome:
    """Apply one custom-attribute or definition event; ``stored`` is the value's customer as the mirror holds it
    (None: unknown). Writes the outcome to the inbox in the same transaction as the change."""
    if job.custom_attribute_key is None:
        return await _read_instead(wc, job)
    assert job.object is not None  # a key implies the object
    deleted_at = (parse_time(job.created_at) or utcnow()) if job.deleted else None
    async with wc.pool.acquire() as conn, conn.transaction():
        key = await event_key(conn, job, wc.settings.square_application_id)
        assert key is not None
        if is_definition_event(job):
            written = bool(await attribute_store.upsert_definitions(
                conn, job.merchant_id, [attribute_store.definition_row(job.object, key=key, deleted_at=deleted_at)]))
        else:
            assert job.customer_id is not None  # every value event names its customer (square_mirror.jobs)
            written = bool(await attribute_store.upsert_values(
                conn, job.merchant_id,
                [attribute_store.value_row(job.customer_id, job.object, key=key, deleted_at=deleted_at)]))
        outcome = (Outcome.DELETED if job.deleted else Outcome.APPLIED) if written else Outcome.STALE
        await inbox.finish(conn, job.merchant_id, job.event_id, outcome)
    if stored is None and job.customer_id is not None and not is_definition_event(job):
        await wc.coalescer.fetch(job.merchant_id, job.customer_id, None)
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
