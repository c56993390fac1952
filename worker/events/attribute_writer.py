"""Batched writes of custom-attribute events: concurrent jobs' values and definitions become one transaction and
one statement per kind every few milliseconds (a :class:`MicroBatcher`), as the inbox and the fetch coalescer do.

One event's write alone costs a transaction and two or three round trips; a burst of custom-attribute events (a
bulk edit, a backlog) would be bounded by them. A batch keeps one state per (customer, key) and per definition
key, the one the staleness rule would keep anyway (the newest); the event that carried it is the one ``written``,
its older or equal twins in the batch are not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from worker import attribute_store
from worker.events.batching import MicroBatcher
from worker.store import Conn

EventKey = tuple[str, str]  # (merchant_id, event_id)


@dataclass(frozen=True, slots=True)
class Change:
    """One event's write: a value row (``customer_id`` set) or a definition row; ``key_final``: the key needs no
    look-up (an owned event's, or one the application's ID settled)."""

    merchant_id: str
    row: dict[str, Any]
    key_final: bool

    @property
    def definition(self) -> bool:
        return "customer_id" not in self.row


class AttributeWriter:
    def __init__(self, pool: asyncpg.Pool, own_application_id: str | None, *, window: float = 0.002) -> None:
        self._pool = pool
        self._own_application_id = own_application_id
        self._batcher: MicroBatcher[EventKey, Change, bool] = MicroBatcher(self._write, window=window)

    async def write(self, event: EventKey, change: Change) -> bool:
        """Whether this event's state was written (False: the mirror already held it or something newer)."""
        return await self._batcher.submit(event, change)

    async def close(self) -> None:
        await self._batcher.close()

    async def _write(self, items: dict[EventKey, Change]) -> dict[EventKey, bool | BaseException]:
        by_merchant: dict[str, dict[EventKey, Change]] = defaultdict(dict)
        for event, change in items.items():
            by_merchant[change.merchant_id][event] = change
        results: dict[EventKey, bool | BaseException] = {}
        for merchant_id, changes in sorted(by_merchant.items()):
            try:
                results.update(await self._write_merchant(merchant_id, changes))
            except Exception as exc:  # this merchant's events retry; the others' stand
                results.update(dict.fromkeys(changes, exc))
        return results

    async def _write_merchant(self, merchant_id: str, changes: Mapping[EventKey, Change]) -> dict[EventKey, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = {event: await self._resolved(conn, merchant_id, change) for event, change in changes.items()}
            value_winners = _winners({e: r for e, r in rows.items() if not changes[e].definition},
                                     lambda r: (r["customer_id"], r["key"]))
            definition_winners = _winners({e: r for e, r in rows.items() if changes[e].definition},
                                          lambda r: r["key"])
            written_values = await attribute_store.upsert_values(
                conn, merchant_id, [rows[e] for e in value_winners.values()])
            written_definitions = await attribute_store.upsert_definitions(
                conn, merchant_id, [rows[e] for e in definition_winners.values()])
        written = ({e for pair, e in value_winners.items() if pair in written_values}
                   | {e for key, e in definition_winners.items() if key in written_definitions})
        return {event: event in written for event in changes}

    async def _resolved(self, conn: Conn, merchant_id: str, change: Change) -> dict[str, Any]:
        if change.key_final:
            return change.row
        key = await attribute_store.resolve_key(conn, merchant_id, change.row["key"], self._own_application_id)
        return {**change.row, "key": key}


def _winners(rows: Mapping[EventKey, dict[str, Any]], identity: Any) -> dict[Any, EventKey]:
    """Per identity, the event whose state the batch writes: the newest (``attribute_store.state_order``), the
    first of equals."""
    best: dict[Any, EventKey] = {}
    for event, row in rows.items():
        held = best.get(identity(row))
        if held is None or attribute_store.state_order(row) > attribute_store.state_order(rows[held]):
            best[identity(row)] = event
    return best
