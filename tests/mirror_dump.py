"""A canonical dump of the mirror's rows, for tests that compare two mirrors fed the same events.

Every column of every mirror table (customers, merge lineage, group and segment definitions, memberships, history,
the inbox) is kept except the ones that record when (or how many times) the mirror itself did something: those
differ from one run to the next by nature. Everything else, Square's data and the times
Square stated (a tombstone's ``deleted_at``, a merge's ``merged_at``, history's ``valid_from``/``valid_to``),
must not depend on the order in which events arrived or on which worker ran them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson

# table -> columns left out: the mirror's own observation and write times, identities (insertion order)
OBSERVED: dict[str, tuple[str, ...]] = {
    # listed_at (schema version 3): when a list or search answer first showed the profile, an observation too;
    # removing a key a row does not have is a no-op, so the dump works on either schema
    "customers": ("observed_at", "synced_at", "listed_at"),
    "customer_merges": ("recorded_at",),
    "customer_groups": ("synced_at",),
    "customer_segments": ("synced_at",),
    "customer_group_members": ("since",),
    "customer_segment_members": ("since",),
    "customer_versions_closed": ("history_id", "observed_at"),
    # membership periods are observation times: joined and left when the mirror saw it
    "customer_group_membership_closed": ("history_id", "joined_at", "left_at"),
    "customer_segment_membership_closed": ("history_id", "joined_at", "left_at"),
    # the inbox: what each run of an event did (outcome 'stale' when another event's fetch had already brought
    # the same state) is a record of the processing, not mirror content
    "webhook_events": ("received_at", "processed_at", "attempts", "outcome", "error"),
}
# Not dumped: merchants (the mirror's bookkeeping about a seller: its token's status, when the mirror first saw
# it or enabled its events), sync_runs and sync_state (the reconcile lanes' runs and watermarks).
# how rows are matched when differences are reported (no key: the whole row)
KEYS: dict[str, tuple[str, ...]] = {
    "customers": ("id",), "customer_merges": ("from_customer_id",), "webhook_events": ("event_id",),
    "customer_versions_closed": ("customer_id", "version"),
}

Dump = dict[str, list[str]]


async def dump_mirror(pool: asyncpg.Pool, excluded: Mapping[str, tuple[str, ...]] = OBSERVED) -> Dump:
    """Each table's rows without the excluded columns, as sorted canonical JSON (row order is irrelevant)."""
    out: Dump = {}
    for table, columns in excluded.items():
        rows = await pool.fetch(f"SELECT to_jsonb(t) - $1::text[] AS j FROM square.{table} t",  # noqa: S608
                                list(columns))
        out[table] = sorted(orjson.dumps(_json(r["j"]), option=orjson.OPT_SORT_KEYS).decode() for r in rows)
    return out


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def dump_differences(want: Dump, got: Dump, *, names: tuple[str, str] = ("want", "got")) -> list[str]:
    """Per table: rows only one side has, and rows with the same key shown field by field."""
    diffs: list[str] = []
    for table in sorted(set(want) | set(got)):
        mine, theirs = want.get(table, []), got.get(table, [])
        if mine == theirs:
            continue
        key = KEYS.get(table, ())
        left = {_key(r, key): r for r in map(orjson.loads, mine)}
        right = {_key(r, key): r for r in map(orjson.loads, theirs)}
        before = len(diffs)
        for k in sorted(set(left) | set(right)):
            a, b = left.get(k), right.get(k)
            if a is None or b is None:
                diffs.append(f"{table} {k}: only in {names[1] if a is None else names[0]}")
            elif a != b:
                fields = {f: (a.get(f), b.get(f)) for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)}
                diffs.append(f"{table} {k}: ({names[0]}, {names[1]}) {fields}")
        if len(diffs) == before:  # the same rows, a different count of some
            diffs.append(f"{table}: {len(mine)} rows in {names[0]}, {len(theirs)} in {names[1]}")
    return diffs


def _key(row: dict[str, Any], key: tuple[str, ...]) -> str:
    return "/".join(str(row.get(k)) for k in key) if key else orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode()
