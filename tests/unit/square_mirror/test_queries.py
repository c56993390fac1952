"""The named-query loader (square_mirror.queries): parsing, unknown names, templating, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from square_mirror.queries import Queries, UnknownQuery, parse

NAMED = """\
-- What this file holds.

-- name: first --
-- The first query.
SELECT 1

-- name: second --
-- The second one, templated.
SELECT id FROM square.{table}
WHERE merchant_id = $1
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_named_queries_are_split_on_their_headers(tmp_path: Path) -> None:
    first, second = parse(_write(tmp_path, "many.sql", NAMED))
    assert (first.name, first.description) == ("first", "The first query.")
    assert first.text == "-- The first query.\nSELECT 1\n"
    assert second.name == "second"
    assert second.text.endswith("WHERE merchant_id = $1\n")
    assert second.fields == {"table"}


def test_a_file_without_headers_is_one_query_named_after_it(tmp_path: Path) -> None:
    [query] = parse(_write(tmp_path, "upsert_things.sql", "-- Upsert the things.\nSELECT 2\n"))
    assert (query.name, query.description) == ("upsert_things", "Upsert the things.")


def test_a_directory_loads_both_forms_and_templates_by_kind(tmp_path: Path) -> None:
    _write(tmp_path, "many.sql", NAMED)
    _write(tmp_path, "single.sql", "SELECT 3\n")
    queries = Queries(tmp_path, templates={"groups": {"table": "customer_groups"}})
    assert queries.names() == ["first", "second", "single"]
    assert "first" in queries
    assert queries.get("single") == "SELECT 3\n"
    assert "FROM square.customer_groups\n" in queries.get("second", "groups")


def test_unknown_names_and_kinds_fail_clearly(tmp_path: Path) -> None:
    queries = Queries(_write(tmp_path, "many.sql", NAMED), templates={"groups": {"table": "customer_groups"}})
    with pytest.raises(UnknownQuery, match=r"no query named 'frist' \(known: first, second\)"):
        queries.get("frist")
    with pytest.raises(KeyError):  # an UnknownQuery is a KeyError
        queries.get("frist")
    with pytest.raises(UnknownQuery, match="templated on"):
        queries.get("second")
    with pytest.raises(UnknownQuery, match="no template kind 'segments'"):
        queries.get("second", "segments")


def test_a_name_defined_twice_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.sql", "-- name: first --\nSELECT 1\n")
    _write(tmp_path, "b.sql", NAMED)
    with pytest.raises(ValueError, match="'first' is defined twice"):
        Queries(tmp_path)


@pytest.mark.parametrize("text", ["SELECT 0\n-- name: first --\nSELECT 1\n", "-- name: first --\n-- nothing\n"])
def test_sql_outside_a_named_query_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match=r"many\.sql"):
        parse(_write(tmp_path, "many.sql", text))
