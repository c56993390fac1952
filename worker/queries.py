"""The worker's SQL: every ``.sql`` file in ``worker/sql``, loaded once by :mod:`square_mirror.queries`.

``queries.get("finish_run")`` is the SQL of a named query; ``queries.get("upsert_definitions", kind)`` fills a
groups-or-segments query's ``{table}``-style fields from :data:`DEFINITIONS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from square_mirror.queries import Queries

# The tables of the two definition kinds: the only identifiers ever templated into the worker's SQL.
DEFINITIONS: Final[dict[str, dict[str, str]]] = {
    "groups": {
        "table": "customer_groups", "members": "customer_group_members", "member_key": "group_id",
        "array_column": "group_ids",
    },
    "segments": {
        "table": "customer_segments", "members": "customer_segment_members", "member_key": "segment_id",
        "array_column": "segment_ids",
    },
}

queries: Final = Queries(Path(__file__).with_name("sql"), templates=DEFINITIONS)
