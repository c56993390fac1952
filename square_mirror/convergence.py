"""Is the mirror equal to Square? A field-by-field comparison of Postgres with the emulator's truth dump.

The demo, the chaos test and the integration tests all judge convergence with :func:`mirror_diff`, so
"converged" means one thing everywhere. The messages name IDs and field names only, never values (PII).

What "equal" means:
- live customers: the same set of IDs (profiles the mirror could not know, i.e. instant profiles that list and
  search never return, may be missing unless ``require_invisible``), and for each one the stored Square object
  (``raw``) equals the truth apart from ``group_ids``/``segment_ids``, which are compared as sets through the
  ``group_ids``/``segment_ids`` columns; every typed column agrees with the object;
- membership tables equal the truth's ``group_members``/``segment_members`` restricted to live customers;
- every truth tombstone the mirror knows is a tombstone in the mirror, with the same ``merged_into``;
  truth merges the mirror knows of are recorded in ``customer_merges``;
- live groups and segments (id and name) are the same sets; deleted ones are tombstoned if the mirror knows them;
- custom attribute definitions (key, name, schema, visibility, version) are the same, and so are the values
  (value, version, visibility) of the live customers the mirror holds, when the truth dump has them.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from square_mirror.queries import queries

PUBLIC_FIELDS = ("given_name", "family_name", "company_name", "email_address", "phone_number")
_COLUMNS = ("version", "given_name", "family_name", "nickname", "company_name", "email_address", "phone_number",
            "birthday", "reference_id", "note", "creation_source")


def _visible(doc: dict[str, Any]) -> bool:
    return any(doc.get(f) for f in PUBLIC_FIELDS)


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("group_ids", "segment_ids")}


async def mirror_diff(pool: asyncpg.Pool, truth: dict[str, Any], merchant_id: str, *,
                      require_invisible: bool = False, check_memberships: bool = True) -> list[str]:
    diffs: list[str] = []
    rows = await pool.fetch(queries.get("mirror_customers"), merchant_id)
    mirror = {r["id"]: r for r in rows}
    live = {cid: r for cid, r in mirror.items() if r["deleted_at"] is None}
    truth_live: dict[str, dict[str, Any]] = truth["customers"]
    tombstones: dict[str, dict[str, Any]] = truth["tombstones"]

    for cid, doc in truth_live.items():
        row = live.get(cid)
        if row is None:
            if cid in mirror:
                diffs.append(f"customer {cid}: live in truth, tombstoned in mirror")
            elif require_invisible or _visible(doc):
                diffs.append(f"customer {cid}: live in truth, missing from mirror")
            continue
        raw = row["raw"] or {}
        if _strip(raw) != _strip(doc):
            keys = sorted(k for k in set(_strip(raw)) | set(_strip(doc)) if raw.get(k) != doc.get(k))
            diffs.append(f"customer {cid}: fields differ: {keys} (mirror v{raw.get('version')}, "
                         f"truth v{doc.get('version')})")
        for col in _COLUMNS:
            want = doc.get(col, 0 if col == "version" else None)
            if row[col] != want:
                diffs.append(f"customer {cid}: column {col} differs")
        if sorted(row["group_ids"]) != sorted(doc.get("group_ids") or []):
            diffs.append(f"customer {cid}: group_ids {sorted(row['group_ids'])} != "
                         f"{sorted(doc.get('group_ids') or [])}")
        if sorted(row["segment_ids"]) != sorted(doc.get("segment_ids") or []):
            diffs.append(f"customer {cid}: segment_ids {sorted(row['segment_ids'])} != "
                         f"{sorted(doc.get('segment_ids') or [])}")
    for cid in live:
        if cid not in truth_live:
            why = "tombstoned" if cid in tombstones else "unknown"
            diffs.append(f"customer {cid}: live in mirror, {why} in truth")
    for cid, stone in tombstones.items():
        row = mirror.get(cid)
        if row is None or row["deleted_at"] is None:
            continue
        if (stone.get("merged_into") or None) != row["merged_into"]:
            diffs.append(f"customer {cid}: merged_into {row['merged_into']} != {stone.get('merged_into')}")

    merges = await pool.fetch(queries.get("mirror_merges"), merchant_id)
    recorded = {r["from_customer_id"]: r["to_customer_id"] for r in merges}
    for merge in truth.get("merges", []):
        source = merge["from_customer_id"]
        if source in mirror and recorded.get(source) != merge["to_customer_id"]:
            diffs.append(f"merge {source} -> {merge['to_customer_id']} not recorded (mirror: {recorded.get(source)})")

    for kind, deleted_key in (("groups", "deleted_groups"), ("segments", "deleted_segments")):
        defs = await pool.fetch(queries.get("mirror_definitions", kind), merchant_id)
        live_defs = {r["id"]: r["name"] for r in defs if r["deleted_at"] is None}
        want = {d["id"]: d.get("name") for d in truth[kind].values()}
        if live_defs != want:
            diffs.append(f"{kind}: mirror {sorted(live_defs.items())} != truth {sorted(want.items())}")
        for did in truth.get(deleted_key, {}):
            if did in live_defs:
                diffs.append(f"{kind[:-1]} {did}: deleted in truth, live in mirror")

    if "custom_attribute_definitions" in truth:
        diffs.extend(await _custom_attribute_diff(pool, truth, merchant_id, set(live)))
    if check_memberships:
        for kind, definitions in (("group_members", "groups"), ("segment_members", "segments")):
            got_rows = await pool.fetch(queries.get("mirror_memberships", definitions), merchant_id)
            got = {(r["d"], r["customer_id"]) for r in got_rows}
            want_pairs = {(d, c) for d, members in truth[kind].items() for c in members
                          if c in live or (require_invisible and c in truth_live)}
            if got != want_pairs:
                missing, extra = sorted(want_pairs - got)[:5], sorted(got - want_pairs)[:5]
                diffs.append(f"{kind}: {len(want_pairs - got)} missing (e.g. {missing}), "
                             f"{len(got - want_pairs)} extra (e.g. {extra})")
    return diffs


_DEFINITION_FIELDS = ("name", "schema", "visibility", "version")
_VALUE_FIELDS = ("value", "version", "visibility")


async def _custom_attribute_diff(pool: asyncpg.Pool, truth: dict[str, Any], merchant_id: str,
                                 live: set[str]) -> list[str]:
    """Definitions and the live customers' values; messages name keys and fields, never values."""
    diffs: list[str] = []
    rows = await pool.fetch(queries.get("mirror_custom_attribute_definitions"), merchant_id)
    mirror_defs = {r["key"]: r for r in rows}
    truth_defs: dict[str, dict[str, Any]] = truth["custom_attribute_definitions"]
    for key in sorted(set(mirror_defs) | set(truth_defs)):
        got, want = mirror_defs.get(key), truth_defs.get(key)
        if got is None or want is None:
            diffs.append(f"custom attribute definition {key}: {'missing from' if got is None else 'extra in'} mirror")
            continue
        fields = [f for f in _DEFINITION_FIELDS if got[f] != want.get(f)]
        if fields:
            diffs.append(f"custom attribute definition {key}: {fields} differ")
    rows = await pool.fetch(queries.get("mirror_custom_attributes"), merchant_id)
    mirror_values = {(r["customer_id"], r["key"]): r for r in rows}
    truth_values = {(cid, key): attr for cid, attrs in (truth.get("custom_attributes") or {}).items()
                    if cid in live for key, attr in attrs.items()}
    missing = sorted(set(truth_values) - set(mirror_values))
    extra = sorted(set(mirror_values) - set(truth_values))
    if missing or extra:
        diffs.append(f"custom attributes: {len(missing)} missing (e.g. {missing[:5]}), {len(extra)} extra "
                     f"(e.g. {extra[:5]})")
    for pair in sorted(set(truth_values) & set(mirror_values)):
        got_value, want_value = mirror_values[pair], truth_values[pair]
        fields = [f for f in _VALUE_FIELDS if got_value[f] != want_value.get(f)]
        if fields:
            diffs.append(f"custom attribute {pair[1]} of customer {pair[0]}: {fields} differ")
    return diffs
