"""The one loader of the project's SQL: named queries in ``.sql`` files, parsed once.

A ``.sql`` file holds either named queries, each after a header line and a one-line description::

    -- name: finish_run --
    -- Close a run with its final status, counts and checkpoint.
    UPDATE square.sync_runs SET ...

or, without any ``-- name:`` header, one statement named after the file (``upsert_customers.sql`` is the
query ``upsert_customers``): the long statements keep a file, and their commentary, of their own.

Names are unique across the files loaded together; an unknown name raises :class:`UnknownQuery`. A query written
for both groups and segments names its tables as ``{table}``-style fields, filled from the loader's
``templates`` by ``kind``: call sites never format SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Final

# The tables of the two definition kinds: the only identifiers ever templated into a named query.
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
_HEADER: Final = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*--\s*$", re.M)


class UnknownQuery(KeyError):
    """A query name no loaded ``.sql`` file defines (or a template kind the loader does not know)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str  # the first comment line after the header (or of a one-statement file)
    text: str
    source: Path

    @property
    def fields(self) -> frozenset[str]:
        """The ``{table}``-style fields the query is templated on (empty for most)."""
        return frozenset(f for _, f, _, _ in Formatter().parse(self.text) if f)


class Queries:
    """Named queries read from ``.sql`` files (a directory means every ``*.sql`` in it)."""

    def __init__(self, *paths: Path, templates: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._templates: dict[str, Mapping[str, str]] = dict(templates or {})
        self._queries: dict[str, Query] = {}
        self._formatted: dict[tuple[str, str | None], str] = {}
        for path in _files(paths):
            for query in parse(path):
                held = self._queries.get(query.name)
                if held is not None:
                    raise ValueError(f"query {query.name!r} is defined twice: in {held.source} and {query.source}")
                self._queries[query.name] = query

    def __contains__(self, name: object) -> bool:
        return name in self._queries

    def names(self) -> list[str]:
        return sorted(self._queries)

    def kinds(self) -> list[str]:
        return sorted(self._templates)

    def query(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise UnknownQuery(f"no query named {name!r} (known: {', '.join(self.names())})") from None

    def get(self, name: str, kind: str | None = None) -> str:
        """The SQL of ``name``; ``kind`` fills a templated query's fields (groups or segments)."""
        key = (name, kind)
        text = self._formatted.get(key)
        if text is None:
            query = self.query(name)
            if kind is None:
                if query.fields:
                    raise UnknownQuery(f"query {name!r} is templated on {sorted(query.fields)}: name a kind")
                text = query.text
            else:
                if kind not in self._templates:
                    raise UnknownQuery(f"no template kind {kind!r} (known: {', '.join(self.kinds())})")
                text = query.text.format(**self._templates[kind])
            self._formatted[key] = text
        return text


def _files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.sql")) if path.is_dir() else [path])
    return files


def parse(path: Path) -> list[Query]:
    """The queries of one file: its ``-- name: x --`` sections, or the whole file named after it."""
    text = path.read_text(encoding="utf-8")
    headers = list(_HEADER.finditer(text))
    if not headers:
        return [Query(path.stem, _description(text), text.strip() + "\n", path)]
    if _statement(text[:headers[0].start()]):
        raise ValueError(f"{path}: SQL before the first '-- name:' header")
    queries = []
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        body = text[header.end():following.start() if following else len(text)].strip()
        if not _statement(body):
            raise ValueError(f"{path}: query {header.group(1)!r} is empty")
        queries.append(Query(header.group(1), _description(body), body + "\n", path))
    return queries


def _description(text: str) -> str:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return first[2:].strip() if first.startswith("--") else ""


def _statement(body: str) -> str:
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--")).strip()


# The shared code's queries. (In a wheel, square_mirror/sql also holds schema.sql and migrations/: not named
# queries, so the files are named rather than the folder.)
_SQL: Final = Path(__file__).with_name("sql")
queries: Final = Queries(_SQL / "queries.sql", _SQL / "credentials.sql", _SQL / "sellers.sql", templates=DEFINITIONS)
