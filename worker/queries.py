"""The worker's SQL: every ``.sql`` file in ``worker/sql``, loaded once by :mod:`square_mirror.queries`.

``queries.get("finish_run")`` is the SQL of a named query; ``queries.get("upsert_definitions", kind)`` fills a
groups-or-segments query's ``{table}``-style fields from :data:`square_mirror.queries.DEFINITIONS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from square_mirror.queries import DEFINITIONS, Queries

queries: Final = Queries(Path(__file__).with_name("sql"), templates=DEFINITIONS)
